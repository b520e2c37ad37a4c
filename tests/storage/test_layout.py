from __future__ import annotations

import pytest

from boltzgen_airflow.campaign.catalog import load_catalog
from boltzgen_airflow.exceptions import UnknownInstanceTypeError
from boltzgen_airflow.storage.layout import Layout, safe_run_id

H = "ab" * 32
K = "0123456789abcdef" * 2


def test_keys_follow_the_contract():
    layout = Layout("my-bucket", "/boltzgen/")
    assert layout.prefix == "boltzgen"
    assert layout.bundle_prefix(H) == f"boltzgen/inputs/{H}/"
    assert layout.bundle_file_key(H, "a/b.cif") == f"boltzgen/inputs/{H}/a/b.cif"
    assert layout.specs_manifest_key(H) == f"boltzgen/inputs/_manifests/{H}.json"
    assert layout.code_prefix(H) == f"boltzgen/code/{H}/"
    assert layout.stage_prefix("folding", K) == f"boltzgen/cache/folding/{K}/"
    assert layout.attempt_prefix("folding", K, "bg-demo-s0001-fold-1") == (
        f"boltzgen/cache/folding/{K}/attempts/bg-demo-s0001-fold-1/"
    )
    assert layout.commit_key("design", K) == f"boltzgen/cache/design/{K}/_COMMITTED.json"
    run = "manual__2025-01-01T00:00:00+00:00"
    assert layout.run_prefix("demo", run) == "boltzgen/campaigns/demo/runs/manual__2025-01-01T00_00_00_00_00/"
    assert layout.work_key("demo", run, "design", "s0003").endswith("/work/design/s0003/work.json")
    assert layout.report_prefix("demo", run).endswith("/report/")
    assert layout.uri("k/x") == "s3://my-bucket/k/x"


@pytest.mark.parametrize(
    "call",
    [
        lambda lo: lo.bundle_prefix("../x"),
        lambda lo: lo.stage_prefix("nope", K),
        lambda lo: lo.attempt_prefix("design", K, "bad_name!"),
        lambda lo: lo.bundle_file_key(H, "../etc/passwd"),
        lambda lo: lo.work_key("demo", "r", "design", "../s1"),
        lambda lo: lo.run_prefix("../demo", "r"),
        lambda lo: lo.run_prefix("demo", "///"),
    ],
)
def test_unsafe_names_are_refused(call):
    with pytest.raises(ValueError, match=r"invalid|unknown|usable"):
        call(Layout("my-bucket", "p"))


def test_layout_validates_bucket_and_prefix():
    with pytest.raises(ValueError, match="bucket"):
        Layout("Bad_Bucket", "p")
    with pytest.raises(ValueError, match="prefix"):
        Layout("ok-bucket", "a/../b")


def test_safe_run_id_keeps_safe_characters():
    assert safe_run_id("scheduled__2025-01-01T00:00:00+00:00") == "scheduled__2025-01-01T00_00_00_00_00"
    assert safe_run_id("a b/c") == "a_b_c"


def test_catalog_lists_families_and_names_unknown_types():
    catalog = load_catalog()
    for family in ("g4dn", "g5", "g6", "g6e", "p4d", "p5", "m5", "c5", "r5"):
        assert any(name.startswith(f"ml.{family}.") for name in catalog.instances)
    g5 = catalog.get("ml.g5.12xlarge")
    assert (g5.gpus, g5.gpu_model, g5.gpu_memory_gb) == (4, "A10G", 24)
    assert g5.price_per_hour > catalog.get("ml.g5.xlarge").price_per_hour
    assert not catalog.get("ml.m5.xlarge").is_gpu
    with pytest.raises(UnknownInstanceTypeError, match=r"ml\.g9\.xlarge.*ml\.g5"):
        catalog.get("ml.g9.xlarge")
