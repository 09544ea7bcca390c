(function () {
  "use strict";
  var sheet = JSON.parse(document.getElementById("sheet-data").textContent);
  var pictures = JSON.parse(document.getElementById("pictures").textContent);
  document.querySelectorAll("img[data-pic]").forEach(function (img) { img.src = pictures[img.dataset.pic] || ""; });

  var cards = Array.prototype.slice.call(document.querySelectorAll("article.sample"));
  var labelCol = sheet.columns.indexOf("expert_label");
  var commentCol = sheet.columns.indexOf("comment");
  var givenCol = sheet.columns.indexOf("given_label");
  // answers[i]: null = not answered yet, "" = skip, sheet.exclude, or a class name
  var answers = sheet.rows.map(function () { return null; });
  var comments = sheet.rows.map(function () { return ""; });
  var current = -1;

  function store() {
    try {
      localStorage.setItem(sheet.storageKey, JSON.stringify({ answers: answers, comments: comments,
        reader: document.getElementById("reader").value }));
    } catch (e) { /* storage may be off for file:// pages; the page works without it */ }
  }
  function restore() {
    try {
      var saved = JSON.parse(localStorage.getItem(sheet.storageKey) || "null");
      if (!saved || saved.answers.length !== answers.length) { return 0; }
      answers = saved.answers; comments = saved.comments;
      document.getElementById("reader").value = saved.reader || "";
      return answers.filter(function (a) { return a !== null; }).length;
    } catch (e) { return 0; }
  }

  function kind(i) {
    var value = answers[i];
    if (value === null) { return "open"; }
    if (value === "") { return "skip"; }
    if (value === sheet.exclude) { return "exclude"; }
    var given = givenCol >= 0 ? sheet.rows[i][givenCol].trim().toLowerCase() : "";
    return value.toLowerCase() === given ? "confirm" : "change";
  }

  function render(i) {
    var card = cards[i], value = answers[i], k = kind(i);
    card.querySelectorAll("button.choice").forEach(function (button) {
      button.classList.toggle("selected", value !== null && button.dataset.value === value);
    });
    ["confirm", "change", "exclude", "skip"].forEach(function (name) {
      card.classList.toggle("answered-" + name, k === name);
    });
    var status = card.querySelector(".status");
    status.className = "status " + k;
    status.textContent = { open: "Not answered", skip: "Skipped: stays in the pool",
      exclude: "Excluded from training", confirm: "Confirmed: " + value,
      change: "Relabel: " + (givenCol >= 0 ? sheet.rows[i][givenCol] : "?") + " \u2192 " + value }[k];
    card.querySelector("input.comment").value = comments[i];
  }

  function summary() {
    var counts = { open: 0, skip: 0, exclude: 0, confirm: 0, change: 0 };
    answers.forEach(function (_, i) { counts[kind(i)] += 1; });
    var done = answers.length - counts.open;
    document.getElementById("done").textContent = done;
    document.getElementById("relabelled").textContent = counts.change;
    document.getElementById("confirmed").textContent = counts.confirm;
    document.getElementById("excluded").textContent = counts.exclude;
    document.getElementById("skipped").textContent = counts.skip;
    document.getElementById("meter").style.width = (answers.length ? 100 * done / answers.length : 0) + "%";
  }

  function select(i, scroll) {
    if (i < 0 || i >= cards.length) { return; }
    if (current >= 0) { cards[current].classList.remove("current"); }
    current = i;
    cards[i].classList.add("current");
    if (scroll) { cards[i].scrollIntoView({ block: "center" }); }
  }

  function answer(i, value, advance) {
    answers[i] = value;
    render(i); summary(); store();
    document.getElementById("saved").textContent = "";
    if (advance && i + 1 < cards.length) { select(i + 1, true); }
  }

  function csvCell(value) {
    value = String(value);
    // the spreadsheet-safe rule of alr_monai.csvcells: `alr answer` drops the apostrophe again
    if (/^ *['=+\-@\t\r\n]/.test(value) && !/^ *[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/.test(value)) {
      value = "'" + value;
    }
    return /[",\r\n]|^\s|\s$/.test(value) ? '"' + value.replace(/"/g, '""') + '"' : value;
  }

  function buildCsv() {
    var columns = sheet.columns.slice();
    var reader = document.getElementById("reader").value.trim();
    var readerCol = columns.indexOf("reader");
    if (reader && readerCol < 0) { columns.push("reader"); readerCol = columns.length - 1; }
    var lines = [columns.map(csvCell).join(",")];
    sheet.rows.forEach(function (row, i) {
      var cells = row.slice();
      while (cells.length < columns.length) { cells.push(""); }
      cells[labelCol] = answers[i] === null ? "" : answers[i];
      if (commentCol >= 0) { cells[commentCol] = comments[i].replace(/[\r\n]+/g, " ").trim(); }
      if (reader && readerCol >= 0) { cells[readerCol] = reader; }
      lines.push(cells.map(csvCell).join(","));
    });
    return lines.join("\n") + "\n";
  }

  function save() {
    var blob = new Blob([buildCsv()], { type: "text/csv;charset=utf-8" });
    var url = URL.createObjectURL(blob);
    var link = document.createElement("a");
    link.href = url; link.download = sheet.filename; link.style.display = "none";
    document.body.appendChild(link); link.click(); link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    var labelled = answers.filter(function (a) { return a !== null && a !== ""; }).length;
    var message = document.getElementById("saved");
    message.textContent = "Saved " + sheet.filename + " (" + labelled + " of " + answers.length +
      " answered) to your downloads folder. ";
    if (!labelled) { message.textContent += "It answers nothing: alr answer refuses it unless given --allow_empty. "; }
    var code = document.createElement("code");
    code.textContent = sheet.answerCommand || ("alr answer " + sheet.filename + " --run_dir <run folder>");
    message.appendChild(document.createTextNode("Apply it with: "));
    message.appendChild(code);
  }

  cards.forEach(function (card, i) {
    card.addEventListener("click", function () { select(i, false); });
    card.addEventListener("focusin", function () { select(i, false); });  // a slider reached with Tab
    card.querySelectorAll("button.choice").forEach(function (button) {
      button.addEventListener("click", function (event) {
        event.stopPropagation(); select(i, false); answer(i, button.dataset.value, false); button.blur();
      });
    });
    var input = card.querySelector("input.comment");
    input.addEventListener("focus", function () { select(i, false); });
    input.addEventListener("input", function () { comments[i] = input.value; store(); });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === "Escape") { event.preventDefault(); input.blur(); }
    });
  });
  // the original image: window (CSS brightness / contrast on the stored picture), slice slider, 1:1 on click
  function windowImage(card) {
    var box = card.querySelector(".origrow");
    if (!box) { return; }
    var img = box.querySelector("img.orig");
    var bright = box.querySelector("input.bright"), contrast = box.querySelector("input.contrast");
    if (img && bright && contrast) {
      img.style.filter = "brightness(" + bright.value + "%) contrast(" + contrast.value + "%)";
    }
  }
  function setWindow(card, b, c) {
    var box = card.querySelector(".origrow");
    if (!box || !box.querySelector("input.bright")) { return; }
    box.querySelector("input.bright").value = b; box.querySelector("input.contrast").value = c;
    windowImage(card);
  }
  function showSlice(card, value) {
    var slicer = card.querySelector("input.slicer");
    if (!slicer) { return; }
    var keys = slicer.dataset.slices.split(","), captions = JSON.parse(slicer.dataset.captions);
    var i = Math.max(0, Math.min(keys.length - 1, Number(value)));
    slicer.value = i;
    card.querySelector("img.orig").src = pictures[keys[i]] || "";
    card.querySelector(".slicetext").textContent = captions[i];
  }
  cards.forEach(function (card) {
    var box = card.querySelector(".origrow");
    if (!box) { return; }
    box.querySelectorAll("input.bright, input.contrast").forEach(function (input) {
      input.addEventListener("input", function () { windowImage(card); });
    });
    box.querySelectorAll("button.wlpreset").forEach(function (button) {
      button.addEventListener("click", function () { setWindow(card, button.dataset.bright, button.dataset.contrast); button.blur(); });
    });
    var reset = box.querySelector("button.wlreset");
    if (reset) { reset.addEventListener("click", function () { setWindow(card, 100, 100); reset.blur(); }); }
    var slicer = box.querySelector("input.slicer");
    if (slicer) { slicer.addEventListener("input", function () { showSlice(card, slicer.value); }); }
    var img = box.querySelector("img.orig");
    if (img) {
      img.addEventListener("click", function () {
        var actual = img.classList.toggle("actual");
        img.width = actual ? img.naturalWidth : Number(img.dataset.width);
        img.height = actual ? img.naturalHeight : Number(img.dataset.height);
      });
    }
  });

  document.getElementById("save").addEventListener("click", save);
  document.getElementById("reader").addEventListener("input", store);

  document.addEventListener("keydown", function (event) {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") { event.preventDefault(); save(); return; }
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    if (target && target.tagName === "INPUT" && target.type === "range") {
      // a slider keeps the keys that move it; Esc leaves it; every other key still answers
      if (event.key === "Escape") { target.blur(); event.preventDefault(); return; }
      if (/^(Arrow|Page|Home$|End$)/.test(event.key)) { return; }
    } else if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) { return; }
    if (!cards.length) { return; }
    if (current < 0) { select(0, true); }
    var key = event.key, handled = true;
    if (/^[1-9]$/.test(key)) {
      var index = Number(key) - 1;
      if (index < sheet.classes.length) { answer(current, sheet.classes[index], true); }
    } else if (key === "x" || key === "X") { answer(current, sheet.exclude, true);
    } else if (key === "s" || key === "S") { answer(current, "", true);
    } else if (key === "u" || key === "U") { answer(current, null, false);
    } else if (key === "c" || key === "C") { cards[current].querySelector("input.comment").focus();
    } else if (key === "[" || key === "]") {
      var slicer = cards[current].querySelector("input.slicer");
      if (slicer) { showSlice(cards[current], Number(slicer.value) + (key === "]" ? 1 : -1)); }
    } else if (key === "r" || key === "R") { setWindow(cards[current], 100, 100);
    } else if (key === "ArrowDown" || key === "ArrowRight" || key === "j") { select(Math.min(current + 1, cards.length - 1), true);
    } else if (key === "ArrowUp" || key === "ArrowLeft" || key === "k") { select(Math.max(current - 1, 0), true);
    } else { handled = false; }
    if (handled) { event.preventDefault(); }
  });

  var restored = restore();
  cards.forEach(function (_, i) { render(i); });
  summary();
  if (restored) {
    document.getElementById("saved").textContent = restored + " answers restored from this browser (not saved to a file yet).";
  }
  if (cards.length) { select(0, false); }
})();
