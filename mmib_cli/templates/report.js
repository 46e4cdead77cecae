"use strict";
(function () {
  // Post data is only ever inserted with textContent / dataset / setAttribute: never parsed as HTML.
  const DATA = JSON.parse(document.getElementById("mmib-data").textContent);
  const records = DATA.records, thumbs = DATA.thumbs, colours = DATA.colours, pageSize = DATA.pageSize;
  const $ = (id) => document.getElementById(id);
  const state = { label: "", relation: "", errors: false, text: "", order: "input", page: 0 };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function fmt(score) { return typeof score === "number" ? score.toFixed(2) : ""; }

  function fillSelect(select, values) {
    Array.from(values).sort().forEach((v) => { const o = el("option", null, v); o.value = v; select.appendChild(o); });
  }
  const labels = new Set(), rels = new Set();
  records.forEach((r) => {
    (r.entities || []).forEach((e) => labels.add(String(e.label)));
    (r.relations || []).forEach((x) => rels.add(String(x.relation)));
  });
  fillSelect($("f-label"), labels);
  fillSelect($("f-relation"), rels);

  function entityMark(ent) {
    const mark = el("mark", "ent");
    mark.dataset.entityLabel = String(ent.label);
    mark.dataset.start = String(ent.start);
    mark.dataset.end = String(ent.end);
    mark.title = ent.label + " " + fmt(ent.score);
    mark.style.background = colours[ent.label] || "#ddd";
    return mark;
  }

  function textWithEntities(r) {
    // offsets are Unicode code points (Python str indices): index the text as an array of code points
    const chars = Array.from(r.text), box = el("div", "text"), extra = [];
    const ents = (r.entities || []).slice().sort((a, b) => a.start - b.start || a.end - b.end);
    let pos = 0;
    ents.forEach((ent) => {
      const ok = Number.isInteger(ent.start) && Number.isInteger(ent.end) && ent.start >= pos &&
        ent.end > ent.start && ent.end <= chars.length;
      if (!ok) { extra.push(ent); return; }
      box.appendChild(document.createTextNode(chars.slice(pos, ent.start).join("")));
      const mark = entityMark(ent);
      mark.appendChild(document.createTextNode(chars.slice(ent.start, ent.end).join("")));
      mark.appendChild(el("span", "lbl", ent.label));
      box.appendChild(mark);
      pos = ent.end;
    });
    box.appendChild(document.createTextNode(chars.slice(pos).join("")));
    const nodes = [box];
    if (extra.length) {  // overlapping or out-of-range spans: still shown, outside the text
      const line = el("div", "extra", "overlapping: ");
      extra.forEach((ent) => {
        const mark = entityMark(ent);
        mark.appendChild(document.createTextNode(ent.text));
        mark.appendChild(el("span", "lbl", ent.label));
        line.appendChild(mark);
        line.appendChild(document.createTextNode(" "));
      });
      nodes.push(line);
    }
    return nodes;
  }

  function card(r) {
    const post = el("article", "post"), body = el("div", "body"), meta = el("div", "meta");
    post.dataset.line = String(r.line);
    meta.appendChild(document.createTextNode("id "));
    meta.appendChild(el("span", "id", r.id));
    meta.appendChild(document.createTextNode(" · line " + r.line));
    if (r.error) meta.appendChild(el("span", "badge error", "error"));
    else if (r.skipped !== undefined) meta.appendChild(el("span", "badge skipped", "skipped"));
    else if (typeof r.min_score === "number") meta.appendChild(el("span", "badge", "min score " + fmt(r.min_score)));
    if (r.image_used) meta.appendChild(el("span", "badge", "image used"));
    body.appendChild(meta);
    if (r.error) {
      const box = el("div", "error");
      box.dataset.error = String(r.error.type);
      box.appendChild(el("b", null, r.error.type + ": "));
      box.appendChild(document.createTextNode(r.error.message));
      body.appendChild(box);
      if (r.text) body.appendChild(el("div", "text", r.text));
    } else if (r.skipped !== undefined) {
      const box = el("div", "skipped", "skipped: " + r.skipped);
      box.dataset.skipped = "1";
      body.appendChild(box);
      if (r.text) body.appendChild(el("div", "text", r.text));
    } else {
      textWithEntities(r).forEach((n) => body.appendChild(n));
      if ((r.relations || []).length) {
        const list = el("ul", "rels");
        r.relations.forEach((x) => {
          const li = el("li");
          li.dataset.relation = String(x.relation);
          li.appendChild(document.createTextNode(x.head + " → "));
          li.appendChild(el("span", "rel", x.relation));
          li.appendChild(document.createTextNode(" → " + x.tail + " "));
          li.appendChild(el("span", "score", fmt(x.score)));
          list.appendChild(li);
        });
        body.appendChild(list);
      }
      if (r.image_problem) body.appendChild(el("div", "problem", "image: " + r.image_problem));
    }
    if (typeof r.thumb === "number" && thumbs[r.thumb]) {
      const img = el("img", "thumb");
      img.alt = String(r.image || "");
      img.loading = "lazy";
      img.src = thumbs[r.thumb];
      post.appendChild(img);
    }
    post.appendChild(body);
    return post;
  }

  function matches(r) {
    if (state.errors && !(r.error || r.skipped !== undefined)) return false;
    if (state.label && !(r.entities || []).some((e) => String(e.label) === state.label)) return false;
    if (state.relation && !(r.relations || []).some((x) => String(x.relation) === state.relation)) return false;
    if (state.text) {
      const hay = (String(r.id) + " " + r.text).toLowerCase();
      if (hay.indexOf(state.text) < 0) return false;
    }
    return true;
  }

  function confidence(r) { return typeof r.min_score === "number" ? r.min_score : Infinity; }

  function render() {
    let rows = records.filter(matches);
    if (state.order === "confidence") rows = rows.slice().sort((a, b) => confidence(a) - confidence(b));
    const pages = Math.max(1, Math.ceil(rows.length / pageSize));
    state.page = Math.min(state.page, pages - 1);
    const shown = rows.slice(state.page * pageSize, (state.page + 1) * pageSize);
    const main = $("posts");
    main.replaceChildren();
    const frag = document.createDocumentFragment();
    shown.forEach((r) => frag.appendChild(card(r)));
    main.appendChild(frag);
    if (!rows.length) main.appendChild(el("p", "empty", "No post matches the filters."));
    $("page").textContent = "page " + (state.page + 1) + " / " + pages;
    $("count").textContent = rows.length + " of " + records.length + " posts";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function bind(id, key, read) {
    $(id).addEventListener("input", () => { state[key] = read($(id)); state.page = 0; render(); });
  }
  bind("f-label", "label", (n) => n.value);
  bind("f-relation", "relation", (n) => n.value);
  bind("f-errors", "errors", (n) => n.checked);
  bind("f-text", "text", (n) => n.value.trim().toLowerCase());
  bind("f-order", "order", (n) => n.value);
  $("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, 0); });
  $("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, 0); });
  render();
})();
