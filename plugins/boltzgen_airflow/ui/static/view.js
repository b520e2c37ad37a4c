/*
 * The campaign view: campaigns -> runs -> a run, drawn from the view's JSON API. No framework and
 * nothing loaded from elsewhere; every table that can grow pages on the server.
 */
(function () {
  "use strict";

  var ROOT = document.body.getAttribute("data-root") || "/boltzgen";
  var AIRFLOW = document.body.getAttribute("data-airflow") || "";
  var app = document.getElementById("app");
  var crumbs = document.getElementById("crumbs");
  var PAGE = 25;

  // -- small helpers -----------------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "onclick" || key === "onchange" || key === "oninput") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function enc(value) { return encodeURIComponent(value); }

  function api(path) {
    return fetch(ROOT + "/api/" + path, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) {
            var error = new Error(body.detail || response.status + " " + response.statusText);
            error.status = response.status;
            throw error;
          }
          return body;
        });
      });
  }

  function num(value, digits) {
    if (value === null || value === undefined || value === "") return "—";
    return Number(value).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function money(value) { return value === null || value === undefined ? "—" : "$" + num(value, 2); }

  function badge(status) { return el("span", { class: "badge status-" + (status || "none"), text: status || "—" }); }

  function airflowLink(path, text) { return el("a", { href: AIRFLOW + path, target: "_top", text: text }); }

  function setCrumbs(parts) {
    crumbs.innerHTML = "";
    parts.forEach(function (part) {
      crumbs.appendChild(el("span", { class: "sep", text: "›" }));
      crumbs.appendChild(part.href ? el("a", { href: part.href, text: part.text }) : el("span", { text: part.text }));
    });
  }

  function fail(err) {
    app.innerHTML = "";
    app.appendChild(el("p", { class: "error", role: "alert", text: String(err.message || err) }));
  }

  function table(headers, rows, attrs) {
    return el("table", Object.assign({ class: "data" }, attrs || {}), [
      el("thead", {}, [el("tr", {}, headers.map(function (h) { return typeof h === "string" ? el("th", { text: h }) : h; }))]),
      el("tbody", {}, rows),
    ]);
  }

  function pager(offset, total, size, go) {
    var pages = Math.max(1, Math.ceil(total / size));
    var page = Math.floor(offset / size) + 1;
    return el("div", { class: "pager" }, [
      el("button", { type: "button", class: "prev", disabled: page <= 1, onclick: function () { go(offset - size); }, text: "‹ Previous" }),
      el("span", { class: "page-of", text: "page " + page + " of " + pages + " · " + total + " rows" }),
      el("button", { type: "button", class: "next", disabled: page >= pages, onclick: function () { go(offset + size); }, text: "Next ›" }),
    ]);
  }

  // -- campaigns ---------------------------------------------------------------------------------

  function showCampaigns() {
    setCrumbs([]);
    api("campaigns").then(function (body) {
      app.innerHTML = "";
      app.appendChild(el("h1", { text: "Campaigns" }));
      if (!body.campaigns.length) {
        app.appendChild(el("p", { class: "muted", text: "No campaign files you may read." }));
        return;
      }
      app.appendChild(table(
        ["Campaign", "Description", "Designs per spec", "Budget", "DAG", "Results"],
        body.campaigns.map(function (c) {
          return el("tr", {}, [
            el("td", {}, [el("a", { href: ROOT + "/campaigns/" + enc(c.dag_id), class: "campaign-link", text: c.name })]),
            el("td", { text: c.description || "" }),
            el("td", { class: "num", text: String(c.num_designs) }),
            el("td", { class: "num", text: String(c.budget) }),
            el("td", {}, [airflowLink("/dags/" + enc(c.dag_id), c.dag_id)]),
            el("td", {}, [el("code", { text: c.results })]),
          ]);
        }),
        { id: "campaign-table" }
      ));
    }).catch(fail);
  }

  // -- runs --------------------------------------------------------------------------------------

  function showRuns(dagId, offset) {
    setCrumbs([{ text: dagId }]);
    api("dags/" + enc(dagId) + "/runs?offset=" + offset + "&limit=" + PAGE).then(function (body) {
      app.innerHTML = "";
      app.appendChild(el("h1", { text: "Campaign " + body.campaign }));
      app.appendChild(el("p", {}, [airflowLink("/dags/" + enc(dagId), "Open the DAG in Airflow")]));
      var rows = body.runs.map(function (r) {
        var runLink = el("a", { href: ROOT + "/runs/" + enc(dagId) + "/" + enc(r.run_id), class: "run-link", text: r.run_id });
        return el("tr", { "data-run": r.run_id }, [
          el("td", {}, [runLink, r.dry_run ? el("span", { class: "tag", text: "dry run" }) : null]),
          el("td", {}, [badge(r.state)]),
          el("td", {}, [r.published ? badge(r.status) : el("span", { class: "muted", text: "not yet" })]),
          el("td", { text: when(r.start_date) }),
          el("td", { class: "num", text: r.published ? String(r.specs) : "—" }),
          el("td", { class: "num", text: r.published ? r.designs_produced + " / " + r.designs_expected : "—" }),
          el("td", { class: "num", text: r.published ? String(r.designs_passing) : "—" }),
          el("td", { class: "num", text: r.published ? String(r.final_designs) : "—" }),
          el("td", { class: "num", text: num(r.estimated_hours, 2) + " / " + num(r.actual_hours, 2) }),
          el("td", { class: "num", text: money(r.estimated_cost_usd) + " / " + money(r.actual_cost_usd) }),
        ]);
      });
      app.appendChild(table(
        ["Run", "Airflow state", "Results", "Started", "Specs", "Designs made", "Passing filters", "Final",
         "Hours est. / actual", "Cost est. / actual"],
        rows, { id: "run-table" }
      ));
      if (!rows.length) app.appendChild(el("p", { class: "muted", text: "No runs yet: trigger the DAG in Airflow." }));
      app.appendChild(pager(offset, body.total, PAGE, function (next) { showRuns(dagId, next); }));
    }).catch(fail);
  }

  // -- a run -------------------------------------------------------------------------------------

  function fileLink(dagId, runId, path, text) {
    return el("a", {
      href: ROOT + "/api/dags/" + enc(dagId) + "/runs/" + enc(runId) + "/files/" + path.split("/").map(enc).join("/"),
      target: path.slice(-5) === ".html" ? "_blank" : null,
      class: "download",
      text: text || path.split("/").pop(),
    });
  }

  function showRun(dagId, runId) {
    setCrumbs([{ text: dagId, href: ROOT + "/campaigns/" + enc(dagId) }, { text: runId }]);
    api("dags/" + enc(dagId) + "/runs/" + enc(runId)).then(function (run) {
      app.innerHTML = "";
      var s = run.summary;
      app.appendChild(el("h1", {}, ["Run ", el("code", { text: runId }), " ", badge(run.status)]));
      app.appendChild(el("dl", { class: "facts" }, [
        fact("Started", when(run.started_at)),
        fact("Finished", when(run.finished_at)),
        fact("Designs made", s.designs_produced + " / " + s.designs_expected),
        fact("Final designs", String(s.final_designs)),
        fact("Instance hours (est. / actual)", num(s.estimated_hours, 2) + " / " + num(s.actual_hours, 2)),
        fact("Cost (est. / actual)", money(s.estimated_cost_usd) + " / " + money(s.actual_cost_usd)),
      ]));
      app.appendChild(el("p", { class: "downloads", id: "run-downloads" }, [
        fileLink(dagId, runId, "report/index.html", "Open the report"), " · ",
        fileLink(dagId, runId, "report/top_designs.csv"), " · ",
        fileLink(dagId, runId, "report/shard_status.csv"), " · ",
        fileLink(dagId, runId, "report/cost.csv"), " · ",
        airflowLink(run.report_task.slice(AIRFLOW.length), "the report task in Airflow"),
      ]));
      var rounds = roundsSection(run.rounds);
      if (rounds) app.appendChild(rounds);
      run.specs.forEach(function (spec, i) { app.appendChild(specSection(dagId, runId, spec, i, run.thresholds)); });
      app.appendChild(costSection(run));
      app.appendChild(shardSection(run));
    }).catch(function (err) {
      if (err.status === 404) showPlan(dagId, runId, err.message); else fail(err);
    });
  }

  // The campaign run a run is a round of: per spec, rounds, designs made, passing, spend, why it stopped.
  function roundsSection(r) {
    if (!r || !r.specs || !(r.until_passing || r.max_cost_usd || r.round > 1)) return null;
    var line = "Round " + r.round + " of at most " + r.max_rounds +
      (r.until_passing ? ", until " + r.until_passing + " designs of each spec pass the filters" : "") +
      (r.max_cost_usd ? " · " + money(r.spent_usd) + " spent of " + money(r.max_cost_usd) : "") +
      (r.reason ? " · stopped: " + r.reason : "");
    return el("section", { id: "rounds" }, [
      el("h2", { text: "Rounds" }),
      el("p", { id: "rounds-note", text: line }),
      table(["Spec", "Rounds", "Designs made", "Passing", "Pass rate", "Spend", "Stopped"], r.specs.map(function (s) {
        return el("tr", { "data-spec": s.spec }, [
          el("td", { text: s.spec }), el("td", { class: "num", text: String(s.rounds) }),
          el("td", { class: "num", text: String(s.made) }), el("td", { class: "num", text: String(s.passing) }),
          el("td", { class: "num", text: s.pass_rate === null ? "—" : num(100 * s.pass_rate, 1) + "%" }),
          el("td", { class: "num", text: money(s.spend_usd) }), el("td", { text: s.stopped || "—" }),
        ]);
      }), { id: "rounds-table" }),
    ]);
  }

  // A run without results (a dry run, or one still running): what its plan task planned.
  function showPlan(dagId, runId, why) {
    api("dags/" + enc(dagId) + "/runs/" + enc(runId) + "/plan").then(function (plan) {
      app.innerHTML = "";
      app.appendChild(el("h1", {}, ["Run ", el("code", { text: runId }), plan.dry_run ? el("span", { class: "tag", text: "dry run" }) : null]));
      app.appendChild(el("p", { class: "muted", id: "plan-note" }, [
        plan.dry_run ? "A dry run: planned and estimated, no job started. " : why + ". What the plan task planned: ",
        airflowLink(plan.plan_task.slice(AIRFLOW.length), "the plan task in Airflow"),
      ]));
      var e = plan.estimate;
      app.appendChild(el("dl", { class: "facts" }, [
        fact("Makespan (h)", num(e.makespan_hours, 2)), fact("Lower bound (h)", num(e.lower_bound_hours, 2)),
        fact("GPU hours", num(e.gpu_hours, 2)), fact("Cost", money(e.cost_usd)),
      ]));
      var stages = e.stages || {};
      app.appendChild(el("h2", { text: "Estimate" }));
      app.appendChild(table(["Stage", "Instance type", "Jobs", "Instance hours", "GPU hours", "Cost"],
        Object.keys(stages).map(function (name) {
          var s = stages[name];
          return el("tr", {}, [el("td", { text: name.replace("_", " ") }), el("td", { text: s.instance_type || "—" }),
            el("td", { class: "num", text: String(s.jobs) }), el("td", { class: "num", text: num(s.instance_hours, 2) }),
            el("td", { class: "num", text: num(s.gpu_hours, 2) }), el("td", { class: "num", text: money(s.cost_usd) })]);
        }), { id: "plan-table" }));
      var names = Object.keys(plan.specs);
      if (!names.length) return;
      app.appendChild(el("h2", { text: "Specs" }));
      app.appendChild(table(["Spec", "Shards", "Files"], names.map(function (name) {
        return el("tr", {}, [el("td", { text: name }), el("td", { class: "num", text: String(plan.specs[name].shards) }),
          el("td", { class: "num", text: String(plan.specs[name].files) })]);
      }), { id: "plan-specs" }));
    }).catch(fail);
  }

  function costSection(run) {
    var est = (run.estimate || {}).stages || {}, act = (run.actual || {}).stages || {};
    var names = Object.keys(est).concat(Object.keys(act).filter(function (k) { return !(k in est); }));
    var rows = names.map(function (name) {
      var e = est[name] || {}, a = act[name] || {};
      return el("tr", {}, [el("td", { text: name.replace("_", " ") }),
        el("td", { class: "num", text: num(e.instance_hours, 2) }), el("td", { class: "num", text: num(a.instance_hours, 2) }),
        el("td", { class: "num", text: money(e.cost_usd) }), el("td", { class: "num", text: money(a.cost_usd) }),
        el("td", { class: "num", text: a.jobs === undefined ? "—" : String(a.jobs) })]);
    });
    return el("section", { class: "cost" }, [el("h2", { text: "Estimated and actual use" }),
      table(["Stage", "Instance hours est.", "actual", "Cost est.", "actual", "Jobs"], rows, { id: "cost-table" })]);
  }

  function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) + " UTC" : "—"; }

  function fact(label, value) { return el("div", {}, [el("dt", { text: label }), el("dd", { text: value })]); }

  function specSection(dagId, runId, spec, index, thresholds) {
    var section = el("section", { class: "spec", "data-spec": spec.spec }, [
      el("h2", {}, [spec.spec + " ", badge(spec.status)]),
      el("p", { class: "muted" }, [
        spec.shards_committed + " of " + spec.shards_total + " shards · " +
        spec.designs_produced + " of " + spec.designs_expected + " designs made · " +
        (spec.designs_passing === null ? "—" : spec.designs_passing) + " of " +
        (spec.designs_ranked === null ? "—" : spec.designs_ranked) + " pass the filters · " +
        spec.final_designs + " final" + (spec.budget ? " (budget " + spec.budget + ")" : "") + " · ",
        airflowLink(spec.filtering_task.slice(AIRFLOW.length), "filtering task"),
        spec.missing_shards && spec.missing_shards.length ? " · missing shards: " + spec.missing_shards.join(", ") : "",
      ]),
    ]);
    if (spec.designs_ranked === null) {
      section.appendChild(el("p", { class: "muted", text: "No filtering results for this spec." }));
      return section;
    }
    section.appendChild(el("h3", { text: "Final designs" }));
    section.appendChild(designTable(dagId, runId, spec.spec, { final: true, id: "final-" + index }));
    section.appendChild(el("h3", { text: "All designs" }));
    section.appendChild(designTable(dagId, runId, spec.spec, { final: false, id: "all-" + index }));
    var dists = el("div", { class: "histograms" });
    section.appendChild(el("h3", { text: "Metric distributions" }));
    section.appendChild(dists);
    api("dags/" + enc(dagId) + "/runs/" + enc(runId) + "/distributions?spec=" + enc(spec.spec)).then(function (body) {
      body.histograms.forEach(function (h) { dists.appendChild(histogram(h)); });
    }).catch(function (err) { dists.appendChild(el("p", { class: "error", text: err.message })); });
    section.appendChild(el("p", { class: "downloads" }, spec.files.map(function (f) {
      return fileLink(dagId, runId, f);
    })));
    return section;
  }

  var METRIC_LABELS = {
    iptm: "ipTM", ptm: "pTM", pae: "min PAE", rmsd: "RMSD", designfolding_rmsd: "RMSD alone",
    hbonds: "H-bonds", saltbridges: "Salt br.", delta_sasa: "ΔSASA",
  };
  var DIGITS = { iptm: 3, ptm: 3, pae: 2, rmsd: 2, designfolding_rmsd: 2, hbonds: 0, saltbridges: 0, delta_sasa: 0 };

  function designTable(dagId, runId, spec, options) {
    var state = { sort: "rank", desc: false, offset: 0, q: "", passing: "" };
    var holder = el("div", { class: "design-table", id: options.id, "data-final": options.final ? "1" : "0" });
    var search = el("input", { type: "search", placeholder: "id or sequence", class: "filter-text" });
    var passing = el("select", { class: "filter-passing" }, [
      el("option", { value: "", text: "all designs" }),
      el("option", { value: "true", text: "passing the filters" }),
      el("option", { value: "false", text: "failing a filter" }),
    ]);
    var timer = null;
    search.oninput = function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.q = search.value; state.offset = 0; load(); }, 250);
    };
    passing.onchange = function () { state.passing = passing.value; state.offset = 0; load(); };
    var body = el("div", { class: "table-body" });
    holder.appendChild(el("div", { class: "filters" }, [el("label", {}, ["Find ", search]), " ", el("label", {}, ["Show ", passing])]));
    holder.appendChild(body);

    function load() {
      var query = "spec=" + enc(spec) + "&sort=" + state.sort + "&desc=" + state.desc + "&offset=" + state.offset +
        "&limit=" + PAGE + "&final=" + options.final + (state.q ? "&q=" + enc(state.q) : "") +
        (state.passing ? "&passing=" + state.passing : "");
      api("dags/" + enc(dagId) + "/runs/" + enc(runId) + "/designs?" + query).then(function (page) {
        render(page);
      }).catch(function (err) { body.innerHTML = ""; body.appendChild(el("p", { class: "error", text: err.message })); });
    }

    function header(key, label, title) {
      var active = state.sort === key;
      return el("th", {
        class: "sortable" + (active ? " sorted" : ""),
        "data-sort": key,
        "aria-sort": active ? (state.desc ? "descending" : "ascending") : "none",
        title: title || "sort",
        onclick: function () {
          state.desc = active ? !state.desc : key === "iptm" || key === "ptm" || key === "quality_score" || key === "hbonds" || key === "delta_sasa";
          state.sort = key; state.offset = 0; load();
        },
      }, [label, active ? (state.desc ? " ▼" : " ▲") : ""]);
    }

    function render(page) {
      var metrics = Object.keys(METRIC_LABELS).filter(function (k) { return k in page.columns; });
      var heads = [header("rank", "Rank"), header("id", "Design"), el("th", { text: "Sequence" }),
        header("quality_score", "Quality")];
      metrics.forEach(function (k) {
        var threshold = page.thresholds[k];
        heads.push(header(k, METRIC_LABELS[k] + (threshold ? " (" + threshold + ")" : ""), page.columns[k]));
      });
      heads.push(el("th", { text: "Filters" }), el("th", { text: "3D" }));
      var rows = page.rows.map(function (d) {
        var cells = [
          el("td", { class: "num", text: d.rank === null ? "—" : String(d.rank) }),
          el("td", {}, [el("code", { text: d.id }), d.final ? el("span", { class: "tag", text: "final" }) : null]),
          el("td", { class: "seq", title: d.sequence, text: d.sequence.length > 24 ? d.sequence.slice(0, 23) + "…" : d.sequence }),
          el("td", { class: "num", text: num(d.quality_score, 3) }),
        ];
        metrics.forEach(function (k) {
          var failing = page.thresholds[k] && d.passed_filters === false ? failsThreshold(page.thresholds[k], d.metrics[k]) : false;
          cells.push(el("td", { class: "num" + (failing ? " fails" : ""), "data-metric": k, text: num(d.metrics[k], DIGITS[k]) }));
        });
        cells.push(el("td", {}, [d.passed_filters === null ? "—" : el("span", {
          class: d.passed_filters ? "pass" : "fail", text: d.passed_filters ? "pass" : "fail" })]));
        cells.push(el("td", {}, [el("button", {
          type: "button", class: "view-3d", "data-design": d.id,
          onclick: function () { openStructure(dagId, runId, spec, d.id); }, text: "View",
        })]));
        return el("tr", { "data-design": d.id }, cells);
      });
      body.innerHTML = "";
      body.appendChild(table(heads, rows));
      body.appendChild(pager(page.offset, page.matching, PAGE, function (next) { state.offset = next; load(); }));
    }

    load();
    return holder;
  }

  function failsThreshold(label, value) {
    if (value === null || value === undefined) return false;
    var limit = parseFloat(label.slice(2));
    return label.charAt(0) === "≤" ? value > limit : value < limit;
  }

  function histogram(h) {
    var width = 300, height = 140, pad = 24;
    var max = Math.max.apply(null, h.counts.concat([1]));
    var low = h.edges[0], high = h.edges[h.edges.length - 1];
    var x = function (v) { return pad + (v - low) / (high - low) * (width - 2 * pad); };
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("class", "histogram");
    h.counts.forEach(function (count, i) {
      var bar = document.createElementNS(ns, "rect");
      var barHeight = count / max * (height - 2 * pad);
      bar.setAttribute("x", x(h.edges[i]));
      bar.setAttribute("width", Math.max(1, x(h.edges[i + 1]) - x(h.edges[i]) - 1));
      bar.setAttribute("y", height - pad - barHeight);
      bar.setAttribute("height", barHeight);
      bar.setAttribute("class", "bar");
      svg.appendChild(bar);
    });
    [[low, "start"], [high, "end"]].forEach(function (pair) {
      var text = document.createElementNS(ns, "text");
      text.setAttribute("x", x(pair[0]));
      text.setAttribute("y", height - 6);
      text.setAttribute("text-anchor", pair[1]);
      text.textContent = Number(pair[0]).toPrecision(3);
      svg.appendChild(text);
    });
    if (h.threshold) {
      var line = document.createElementNS(ns, "line");
      line.setAttribute("x1", x(h.threshold.value)); line.setAttribute("x2", x(h.threshold.value));
      line.setAttribute("y1", pad / 2); line.setAttribute("y2", height - pad);
      line.setAttribute("class", "threshold");
      svg.appendChild(line);
    }
    var caption = h.label + (h.threshold ? " · filter " + h.threshold.label + ": " + h.passing + " pass" : "");
    return el("figure", { class: "metric", "data-metric": h.metric }, [svg, el("figcaption", { text: caption })]);
  }

  function shardSection(run) {
    var stages = [];
    run.shards.forEach(function (s) { Object.keys(s.stages).forEach(function (k) { if (stages.indexOf(k) < 0) stages.push(k); }); });
    var rows = run.shards.map(function (s) {
      return el("tr", { "data-shard": s.shard }, [el("td", {}, [el("code", { text: s.shard })]), el("td", { text: s.specs.join(", ") })]
        .concat(stages.map(function (stage) {
          var cell = s.stages[stage];
          if (!cell) return el("td", { text: "" });
          return el("td", {}, [el("a", { href: cell.task, target: "_top", class: "task-link", title: cell.job_name || "" }, [badge(cell.status)])]);
        })));
    });
    return el("section", { class: "shards" }, [
      el("h2", { text: "Shards" }),
      el("p", { class: "muted", text: "Each status opens the shard's task in Airflow (its log, its job's extra links)." }),
      table(["Shard", "Specs"].concat(stages.map(function (s) { return s.replace("_", " "); })), rows, { id: "shard-table" }),
    ]);
  }

  // -- the 3D dialog -----------------------------------------------------------------------------

  var dialog = document.getElementById("structure-dialog");
  var current = null;

  function openStructure(dagId, runId, spec, designId) {
    var url = ROOT + "/api/dags/" + enc(dagId) + "/runs/" + enc(runId) + "/structure?spec=" + enc(spec) + "&design=" + enc(designId);
    var holder = document.getElementById("structure-viewer");
    var legend = document.getElementById("structure-legend");
    var colour = document.getElementById("structure-colour");
    document.getElementById("structure-title").textContent = designId;
    document.getElementById("structure-download").setAttribute("href", url + "&download=1");
    holder.removeAttribute("data-atoms");
    holder.innerHTML = "";
    legend.textContent = "Loading…";
    if (!dialog.open) dialog.showModal();
    fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) throw new Error("structure of " + designId + ": " + response.status);
      return response.text();
    }).then(function (cif) {
      current = window.BoltzGenStructure.show(holder, cif, colour.value);
      window.BoltzGenStructure.renderLegend(legend, current.legend);
    }).catch(function (err) { legend.textContent = err.message; });
  }

  document.getElementById("structure-colour").onchange = function (event) {
    if (current) window.BoltzGenStructure.renderLegend(document.getElementById("structure-legend"), current.recolour(event.target.value));
  };
  document.getElementById("structure-close").onclick = function () { dialog.close(); };

  // -- routing -----------------------------------------------------------------------------------

  var path = window.location.pathname.slice(ROOT.length).split("/").filter(Boolean).map(decodeURIComponent);
  if (path[0] === "campaigns" && path.length === 2) showRuns(path[1], 0);
  else if (path[0] === "runs" && path.length === 3) showRun(path[1], path[2]);
  else showCampaigns();
})();
