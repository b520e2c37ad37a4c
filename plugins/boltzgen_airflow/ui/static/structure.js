/*
 * The 3D view of one design, on the bundled 3Dmol.js (window.$3Dmol). Shared by the campaign view
 * and the static report: showStructure(element, cifText, colour) draws the model and returns the
 * chains it holds with their colours, for a legend.
 */
(function (global) {
  "use strict";

  var CHAIN_COLOURS = ["#1f4e79", "#e07b39", "#3a8d5c", "#8e5ea2", "#c0392b", "#17a2b8", "#b7950b", "#5d6d7e"];

  function chainsOf(model) {
    var seen = [];
    model.selectedAtoms({}).forEach(function (atom) {
      if (seen.indexOf(atom.chain) < 0) seen.push(atom.chain);
    });
    return seen;
  }

  function bRange(model) {
    var low = Infinity, high = -Infinity;
    model.selectedAtoms({}).forEach(function (atom) {
      if (atom.b < low) low = atom.b;
      if (atom.b > high) high = atom.b;
    });
    return [low, high];
  }

  function extents(model) {
    var low = [Infinity, Infinity, Infinity], high = [-Infinity, -Infinity, -Infinity];
    model.selectedAtoms({}).forEach(function (atom) {
      [atom.x, atom.y, atom.z].forEach(function (v, i) {
        if (v < low[i]) low[i] = v;
        if (v > high[i]) high[i] = v;
      });
    });
    return [high[0] - low[0], high[1] - low[1], high[2] - low[2]];
  }

  // A model without side chains (a CA trace, or backbone atoms only, as design-stage models have)
  // draws as a thin line in cartoon: it is drawn as a tube through its CA atoms instead.
  var BACKBONE = { N: true, CA: true, C: true, O: true, OXT: true };
  function backboneOnly(model) {
    var atoms = model.selectedAtoms({});
    return atoms.length > 0 && atoms.every(function (atom) { return BACKBONE[atom.atom] === true; });
  }

  // Bond consecutive CA atoms of a chain, so a CA trace draws as one continuous tube.
  function bondTrace(model) {
    var atoms = model.selectedAtoms({ atom: "CA" });
    for (var i = 1; i < atoms.length; i++) {
      var a = atoms[i - 1], b = atoms[i];
      if (a.chain !== b.chain || b.resi - a.resi !== 1) continue;
      a.bonds.push(b.index); a.bondOrder.push(1);
      b.bonds.push(a.index); b.bondOrder.push(1);
    }
  }

  function styleFor(colour, trace, extra) {
    if (trace) return { stick: Object.assign({ radius: 0.9 }, extra), sphere: Object.assign({ radius: 1.2 }, extra) };
    return { cartoon: Object.assign({ thickness: 0.4 }, extra) };
  }

  function paint(viewer, model, colour) {
    var chains = chainsOf(model);
    var trace = backboneOnly(model);
    var only = trace ? { atom: "CA" } : {};
    var legend = [];
    viewer.setStyle({}, {});
    if (colour === "bfactor") {
      var range = bRange(model);
      var low = Math.min(range[0], 50), high = Math.max(range[1], 90);
      var scheme = { prop: "b", gradient: "roygb", min: low, max: high };
      viewer.setStyle(only, styleFor(colour, trace, { colorscheme: scheme }));
      legend.push({ label: "pLDDT / B-factor " + low.toFixed(0) + " (red) → " + high.toFixed(0) + " (blue)", colour: null });
      if (range[0] === range[1]) legend.push({ label: "every atom has B-factor " + range[0].toFixed(1), colour: null });
    } else if (colour === "spectrum") {
      viewer.setStyle(only, styleFor(colour, trace, { color: "spectrum" }));
      legend.push({ label: "N-terminus (blue) → C-terminus (red)", colour: null });
    } else {
      chains.forEach(function (chain, i) {
        var c = CHAIN_COLOURS[i % CHAIN_COLOURS.length];
        viewer.setStyle(Object.assign({ chain: chain }, only), styleFor(colour, trace, { color: c }));
        legend.push({ label: "chain " + chain, colour: c });
      });
    }
    viewer.render();
    return legend;
  }

  /**
   * Draw a structure into an element (a new viewer each time).
   * @param {HTMLElement} element where the canvas goes
   * @param {string} cif the mmCIF text
   * @param {string} colour "chain", "bfactor" or "spectrum"
   * @return {{viewer: object, legend: Array, recolour: function(string): Array}}
   */
  function showStructure(element, cif, colour) {
    if (!global.$3Dmol) throw new Error("the 3D viewer (3Dmol.js) did not load");
    element.innerHTML = "";
    var viewer = global.$3Dmol.createViewer(element, {
      backgroundColor: "white",
      antialias: true,
      preserveDrawingBuffer: true,
    });
    var model = viewer.addModel(cif, "cif");
    if (backboneOnly(model)) bondTrace(model);
    var legend = paint(viewer, model, colour || "chain");
    // The camera looks down z: a model longest along z would be seen end-on, so turn it sideways.
    var ext = extents(model);
    if (ext[2] > ext[0] && ext[2] > ext[1]) viewer.rotate(90, "y");
    viewer.zoomTo();
    viewer.render();
    element.setAttribute("data-atoms", String(model.selectedAtoms({}).length));
    element.setAttribute("data-chains", chainsOf(model).join(","));
    return {
      viewer: viewer,
      legend: legend,
      recolour: function (next) { return paint(viewer, model, next); },
    };
  }

  function renderLegend(element, legend) {
    element.innerHTML = "";
    legend.forEach(function (entry) {
      var item = document.createElement("span");
      item.className = "legend-item";
      if (entry.colour) {
        var swatch = document.createElement("i");
        swatch.style.background = entry.colour;
        item.appendChild(swatch);
      }
      item.appendChild(document.createTextNode(entry.label));
      element.appendChild(item);
    });
  }

  global.BoltzGenStructure = { show: showStructure, renderLegend: renderLegend };
})(window);
