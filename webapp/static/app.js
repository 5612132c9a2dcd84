// Progressive enhancement only: every page works without this file.
// Upload forms: preview, size check, upload/analysis progress, no double submit, errors
// that keep the chosen file. Results: heatmap opacity, print, sortable patient table.
(function () {
  "use strict";

  function $(selector, root) { return (root || document).querySelector(selector); }

  function formatBytes(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(bytes / 1024)) + " KB";
  }

  function drawPreview(file, canvas, maxSide) {
    if (!window.createImageBitmap) { return Promise.reject(new Error("no decoder")); }
    return createImageBitmap(file).then(function (bitmap) {
      var scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
      canvas.width = Math.max(1, Math.round(bitmap.width * scale));
      canvas.height = Math.max(1, Math.round(bitmap.height * scale));
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      bitmap.close();
      return canvas;
    });
  }

  function showPreview(form, input) {
    var figure = $("#preview", form), caption = $("#preview-caption", form);
    var files = Array.prototype.slice.call(input.files || []);
    var maxBytes = Number(form.dataset.maxBytes || 0), maxFiles = Number(form.dataset.maxFiles || 1);
    if (!figure) { return; }
    if (!files.length) { figure.hidden = true; return; }
    var total = files.reduce(function (sum, f) { return sum + f.size; }, 0);
    var notes = [files.length === 1 ? files[0].name + ", " + formatBytes(total)
                                    : files.length + " photos, " + formatBytes(total)];
    if (maxBytes && total > maxBytes) { notes.push("too large: the limit is " + formatBytes(maxBytes)); }
    if (input.multiple && files.length > maxFiles) { notes.push("too many: the limit is " + maxFiles + " photos"); }
    input.setCustomValidity(notes.length > 1 ? "This upload is " + notes.slice(1).join(" and ") + "." : "");
    caption.textContent = notes.join("; ");
    figure.hidden = false;
    var single = $("#preview-canvas", form), strip = $("#preview-strip", form);
    if (single) {
      drawPreview(files[0], single, 640).catch(function () {
        single.hidden = true;
        caption.textContent = notes.join("; ") + ". No preview for this format; it can still be analysed.";
      }).then(function (c) { if (c) { c.hidden = false; } });
    } else if (strip) {
      strip.textContent = "";
      files.slice(0, maxFiles).forEach(function (file) {
        var canvas = document.createElement("canvas");
        canvas.setAttribute("role", "img");
        canvas.setAttribute("aria-label", "Preview of " + file.name);
        strip.appendChild(canvas);
        drawPreview(file, canvas, 192).catch(function () { canvas.remove(); });
      });
    }
  }

  function setProgress(form, value, text) {
    var box = $("#progress", form), bar = $("#progress-bar", form), label = $("#progress-text", form);
    if (!box) { return; }
    box.hidden = false;
    if (value === null) { bar.removeAttribute("value"); } else { bar.value = value; }
    label.textContent = text;
  }

  function showError(form, html, status) {
    var old = $("#upload-error");
    var incoming = html ? new DOMParser().parseFromString(html, "text/html") : null;
    var fresh = incoming && incoming.querySelector("#upload-error, .error");
    if (!fresh) {
      fresh = document.createElement("div");
      fresh.className = "error";
      fresh.setAttribute("role", "alert");
      fresh.textContent = status
        ? "The server could not analyse this upload (HTTP " + status + "). Your photo is still selected; try again in a moment."
        : "Could not reach the server. Check your connection and try again; your photo is still selected.";
    }
    fresh.id = "upload-error";
    fresh = document.importNode(fresh, true);
    if (old) { old.replaceWith(fresh); } else { form.parentNode.insertBefore(fresh, form); }
    var input = $("input[type=file]", form);
    var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(function (id) { return id && id !== "upload-error"; });
    described.push("upload-error");
    input.setAttribute("aria-describedby", described.join(" "));
    // A form that expired cannot be fixed by resubmitting the same token; take the new one.
    var token = incoming && incoming.querySelector("input[name=csrf_token]");
    if (token && $("input[name=csrf_token]", form)) { $("input[name=csrf_token]", form).value = token.value; }
  }

  function showPage(html) {
    var incoming = new DOMParser().parseFromString(html, "text/html");
    document.title = incoming.title;
    document.body.replaceWith(document.importNode(incoming.body, true));
    window.scrollTo(0, 0);
    enhance(document);
    var heading = $("h1");
    if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
  }

  function submitWithProgress(form, event) {
    if (!window.XMLHttpRequest || !window.FormData) { return; }
    event.preventDefault();
    if (form.dataset.busy === "1") { return; }
    form.dataset.busy = "1";
    var button = $("button[type=submit]", form);
    button.disabled = true;
    button.setAttribute("aria-disabled", "true");
    var started = Date.now(), timer = null;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "text/html");
    setProgress(form, 0, "Uploading…");
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) { setProgress(form, Math.round(100 * e.loaded / e.total), "Uploading… " + Math.round(100 * e.loaded / e.total) + "%"); }
    };
    xhr.upload.onload = function () {
      setProgress(form, null, "Analysing… the model is looking at your photo.");
      timer = setInterval(function () {
        setProgress(form, null, "Analysing… " + Math.round((Date.now() - started) / 1000) + " s");
      }, 1000);
    };
    function done() {
      clearInterval(timer);
      form.dataset.busy = "";
      button.disabled = false;
      button.removeAttribute("aria-disabled");
      $("#progress", form).hidden = true;
    }
    xhr.onload = function () {
      done();
      var html = xhr.responseText || "";
      if (xhr.status === 200) { showPage(html); } else { showError(form, html, xhr.status); }
    };
    xhr.onerror = xhr.ontimeout = function () { done(); showError(form, null, 0); };
    xhr.send(new FormData(form));
  }

  function enhanceForm(form) {
    var input = $("input[type=file]", form);
    if (!input) { return; }
    input.addEventListener("change", function () { showPreview(form, input); });
    if (input.files && input.files.length) { showPreview(form, input); }
    form.addEventListener("submit", function (event) { submitWithProgress(form, event); });
  }

  function enhanceResult(root) {
    var control = $(".opacity-control", root), slider = $("#opacity", root), layer = $("img.heatmap", root);
    if (control && slider && layer) {
      control.hidden = false;
      var apply = function () { layer.style.opacity = String(slider.value / 100); };
      slider.addEventListener("input", apply);
      apply();
    }
    var printItem = $(".print-item", root), print = $("#print", root);
    if (printItem && print) {
      printItem.hidden = false;
      print.addEventListener("click", function () { window.print(); });
    }
    var table = $("table[data-sortable]", root);
    if (table) { enhanceTable(table); }
  }

  function enhanceTable(table) {
    var body = table.tBodies[0];
    Array.prototype.forEach.call(table.querySelectorAll("th[data-sort]"), function (th) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = th.textContent;
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () {
        var key = th.dataset.sort;
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) { return Number(b.dataset[key]) - Number(a.dataset[key]); });
        rows.forEach(function (row) { body.appendChild(row); });
        Array.prototype.forEach.call(table.querySelectorAll("th[data-sort]"), function (other) {
          if (other === th) { other.setAttribute("aria-sort", "descending"); } else { other.removeAttribute("aria-sort"); }
        });
        table.caption.textContent = key === "probability"
          ? "Ranked by melanoma probability, highest first"
          : "Ranked by how much each lesion differs from the others, most different first";
      });
    });
  }

  function enhance(root) {
    Array.prototype.forEach.call(root.querySelectorAll("form[data-enhance]"), enhanceForm);
    enhanceResult(root);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  } else {
    enhance(document);
  }
}());
