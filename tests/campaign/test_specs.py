from __future__ import annotations

import os
from pathlib import Path

import pytest

from boltzgen_airflow.campaign.specs import (
    FALLBACK_CHAIN_RESIDUES,
    discover_bundles,
    resolve_bundle,
    sequence_residues,
)

CIF = """data_X
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.label_atom_id
_atom_site.label_asym_id
_atom_site.label_seq_id
_atom_site.auth_asym_id
_atom_site.pdbx_PDB_model_num
ATOM 1 N A 1 A 1
ATOM 2 CA A 1 A 1
ATOM 3 CA A 2 A 1
ATOM 4 CA A 3 A 1
ATOM 5 CA B 1 X 1
HETATM 6 O C . C 1
ATOM 7 CA A 4 A 2
#
"""


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def spec_with(path: object, extra: str = "") -> str:
    return f"entities:\n  - protein: {{id: Z, sequence: 10..20}}\n  - file:\n      path: {path}\n{extra}"


# --- the published BoltzGen examples ------------------------------------------------------------


def test_examples_folder_acceptance(shared_examples):
    yamls = sorted(shared_examples.rglob("*.yaml"))
    assert len(yamls) == 55
    bundles = discover_bundles(shared_examples)
    assert len(bundles) == 51
    by_spec = {b.spec: b for b in bundles}
    showcase = by_spec["design_spec_showcasing_all_functionalities.yaml"]
    assert any("8r3a.cif" in e and "not found" in e for e in showcase.errors)
    for bundle in bundles:
        for error in bundle.errors:
            assert error.startswith(bundle.spec + ": ")
        if bundle.ok:
            assert bundle.hash and len(bundle.hash) == 64
            assert all((shared_examples / f).is_file() for f in bundle.files)
            assert bundle.residues > 0


def test_examples_reference_exactly_what_they_name(shared_examples):
    by_spec = {b.spec: b for b in discover_bundles(shared_examples)}
    assert by_spec["vanilla_protein/1g13prot.yaml"].files == ("vanilla_protein/1g13.cif",)
    assert by_spec["protein_binding_small_molecule/chorismite.yaml"].files == ()
    scaffolds = [
        f"nanobody_scaffolds/{n}.{e}" for n in ("7eow", "7xl0", "8coh", "8z8v") for e in ("cif", "yaml")
    ]
    assert by_spec["hard_targets/1g13nano.yaml"].files == tuple(sorted(["hard_targets/1g13.cif", *scaffolds]))
    # Nested scaffold YAMLs belong to the specs that name them; they are not specs themselves.
    assert not any(s.startswith("nanobody_scaffolds/") for s in by_spec)
    # A list entry BoltzGen may draw that does not exist is an error.
    bad = by_spec["hard_targets/1nb0nano.yaml"]
    assert bad.errors and "example/nanobody_scaffolds/7eow.yaml" in bad.errors[0]
    assert "entities[1].file.path[0]" in bad.errors[0]


# --- resolution rules -------------------------------------------------------------------------


def test_relative_paths_resolve_from_the_naming_file(tmp_path):
    write(tmp_path, "targets/t.cif", CIF)
    write(tmp_path, "scaffolds/s.cif", CIF)
    write(tmp_path, "scaffolds/s.yaml", "path: s.cif\ninclude:\n  - chain: {id: A}\n")
    write(
        tmp_path,
        "specs/a.yaml",
        spec_with("../targets/t.cif") + "  - file:\n      path: [../scaffolds/s.yaml]\n",
    )
    bundle = resolve_bundle(tmp_path, "specs/a.yaml")
    assert bundle.errors == ()
    assert bundle.files == ("scaffolds/s.cif", "scaffolds/s.yaml", "targets/t.cif")


def test_hash_is_stable_and_tracks_content_and_paths(tmp_path):
    write(tmp_path, "t.cif", CIF)
    write(tmp_path, "a.yaml", spec_with("t.cif"))
    first = resolve_bundle(tmp_path, "a.yaml").hash
    assert resolve_bundle(tmp_path, "a.yaml").hash == first
    write(tmp_path, "t.cif", CIF + "# changed\n")
    assert resolve_bundle(tmp_path, "a.yaml").hash != first


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("missing.cif", "not found"),
        ("../outside.cif", "leaves the specs root"),
        ("/etc/hostname", "absolute path"),
        ("[ok.cif, gone.yaml]", "not found"),
        ("[]", "nothing to choose"),
        ("''", "non-empty string"),
    ],
)
def test_reference_errors_name_spec_and_path(tmp_path, ref, fragment):
    root = tmp_path / "root"
    write(root, "ok.cif", CIF)
    write(tmp_path, "outside.cif", CIF)
    write(root, "a.yaml", spec_with(ref))
    bundle = resolve_bundle(root, "a.yaml")
    assert bundle.errors, bundle
    assert any(e.startswith("a.yaml: entities[1].file.path") and fragment in e for e in bundle.errors)


def test_symlink_out_of_root_is_an_error(tmp_path):
    root = tmp_path / "root"
    write(tmp_path, "secret.cif", CIF)
    root.mkdir()
    os.symlink(tmp_path / "secret.cif", root / "link.cif")
    write(root, "a.yaml", spec_with("link.cif"))
    assert "symlink out of the specs root" in resolve_bundle(root, "a.yaml").errors[0]


def test_oversized_file_is_an_error(tmp_path):
    write(tmp_path, "big.cif", CIF * 10)
    write(tmp_path, "a.yaml", spec_with("big.cif"))
    bundle = resolve_bundle(tmp_path, "a.yaml", max_file_bytes=len(CIF))
    assert "above the limit" in bundle.errors[0]
    assert discover_bundles(tmp_path, max_file_bytes=len(CIF))[0].errors


def test_nested_yaml_errors(tmp_path):
    write(tmp_path, "n1.yaml", "include: all\n")
    write(tmp_path, "n2.yaml", "path: missing.cif\n")
    write(tmp_path, "n3.yaml", "path: [x.cif]\n")
    write(tmp_path, "a.yaml", spec_with("[n1.yaml, n2.yaml, n3.yaml]"))
    errors = resolve_bundle(tmp_path, "a.yaml").errors
    assert any("n1.yaml" in e and "'path'" in e for e in errors)
    assert any("n2.yaml" in e and "not found" in e for e in errors)
    assert any("n3.yaml" in e and "structure file" in e for e in errors)


def test_invalid_yaml_and_bad_stems(tmp_path):
    write(tmp_path, "broken.yaml", "entities: [unclosed\n")
    write(tmp_path, "design_01.yaml", spec_with("t.cif"))
    write(tmp_path, "x_native.yaml", spec_with("t.cif"))
    write(tmp_path, "t.cif", CIF)
    write(tmp_path, "notes.yaml", "just: data\n")
    by_spec = {b.spec: b for b in discover_bundles(tmp_path)}
    assert set(by_spec) == {"broken.yaml", "design_01.yaml", "x_native.yaml"}
    assert "invalid YAML" in by_spec["broken.yaml"].errors[0]
    assert "_<digits>" in by_spec["design_01.yaml"].errors[0]
    assert "_native" in by_spec["x_native.yaml"].errors[0]


def test_include_glob_selects_specs(tmp_path):
    write(tmp_path, "t.cif", CIF)
    write(tmp_path, "a/one.yaml", spec_with("../t.cif"))
    write(tmp_path, "b/two.yaml", spec_with("../t.cif"))
    assert [b.spec for b in discover_bundles(tmp_path, "a/*.yaml")] == ["a/one.yaml"]
    assert [b.spec for b in discover_bundles(tmp_path)] == ["a/one.yaml", "b/two.yaml"]


# --- residue estimate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [("15..20AAAAAAVTTTT18PPP", 20 + 11 + 18 + 3), ("3..5C6C3", 5 + 1 + 6 + 1 + 3), (17, 17), ("ACDE", 4)],
)
def test_sequence_upper_bound(sequence, expected):
    assert sequence_residues(sequence) == expected


def test_residues_count_designed_upper_bound_and_included_chains(tmp_path):
    write(tmp_path, "t.cif", CIF)
    # Chain A has 3 residues in model 1 (model 2 ignored); B (auth X) has 1.
    write(tmp_path, "all.yaml", spec_with("t.cif"))
    write(tmp_path, "a.yaml", spec_with("t.cif", "      include:\n        - chain: {id: A}\n"))
    write(
        tmp_path,
        "ins.yaml",
        spec_with(
            "t.cif",
            "      include:\n        - chain: {id: A, res_index: 2..}\n"
            "      design_insertions:\n        - insertion: {id: A, num_residues: 2..4}\n",
        ),
    )
    write(tmp_path, "unknown.yaml", spec_with("t.cif", "      include:\n        - chain: {id: Q}\n"))
    by_spec = {b.spec: b for b in discover_bundles(tmp_path)}
    assert by_spec["all.yaml"].residues == 20 + 4
    assert by_spec["a.yaml"].residues == 20 + 3
    assert by_spec["ins.yaml"].residues == 20 + 2 + 4
    assert by_spec["unknown.yaml"].residues == 20 + FALLBACK_CHAIN_RESIDUES
    assert "fallback" in by_spec["unknown.yaml"].residues_source


# --- residue ranges BoltzGen refuses ----------------------------------------------------------


def test_a_residue_range_with_a_space_is_refused_before_any_job(shared_examples):
    """npm1.yaml's ``12..118, 243..291`` would fail BoltzGen's ``configure`` on the GPU instance."""
    npm1 = resolve_bundle(shared_examples, "binding_disordered_regions_of_proteins/npm1.yaml")
    assert not npm1.ok
    (error,) = npm1.errors
    assert error.startswith("binding_disordered_regions_of_proteins/npm1.yaml: entities[1].file.")
    assert "structure_groups[0].group.res_index: malformed residue range ' 243..291'" in error


@pytest.mark.parametrize(
    ("value", "refused"),
    [("12..118,243..291", None), ("all", None), ("..5,7,9..", None), ("3", None),
     ("12..118, 243..291", "' 243..291'"), ("1-5", "'1-5'"), ("", "''")],
)  # fmt: skip
def test_residue_ranges_follow_boltzgens_grammar(tmp_path, value, refused):
    write(tmp_path, "t.cif", CIF)
    extra = f"      binding_types: [{{chain: {{id: A, binding: '{value}'}}}}]\n"
    bundle = resolve_bundle(tmp_path, write(tmp_path, "s.yaml", spec_with("t.cif", extra)))
    if refused is None:
        assert bundle.ok, bundle.errors
    else:
        assert bundle.errors == (
            f"s.yaml: entities[1].file.binding_types[0].chain.binding: malformed residue range {refused} "
            f"in '{value}' (BoltzGen's parse_range takes no spaces: '12..118,243..291')",
        )


def test_a_nested_file_yaml_has_its_ranges_checked_too(tmp_path):
    write(tmp_path, "t.cif", CIF)
    write(tmp_path, "scaffold.yaml", "path: t.cif\ninclude: [{chain: {id: A, res_index: '1..2, 3'}}]\n")
    bundle = resolve_bundle(tmp_path, write(tmp_path, "s.yaml", spec_with("scaffold.yaml")))
    assert bundle.errors == (
        "s.yaml: entities[1].file.path -> scaffold.yaml.include[0].chain.res_index: malformed residue "
        "range ' 3' in '1..2, 3' (BoltzGen's parse_range takes no spaces: '12..118,243..291')",
    )
