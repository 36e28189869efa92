/*
 * Pictures on the generate pages: the drop zones (choose, drop or paste a picture; the same
 * checks, with the same immediate error, whichever way it came) and the send path, which uploads
 * the form as multipart/form-data (fields as form fields, pictures as file parts) with a progress
 * bar and a cancel button. There is no fixed timeout while bytes are moving: only a stall (no
 * progress for STALL_MS) ends an upload, and a failed connection is named as such, with how much
 * got through, rather than blamed on the studio.
 *
 * Loaded after common.js on the two generate pages only; it adds Studio.dropzone and
 * Studio.upload ({send, checkPicture}).
 */
window.Studio.upload = (function ($, S) {
  "use strict";

  const t = S.t;
  const STALL_MS = 60000;
  const ACCEPTED = ["image/jpeg", "image/png", "image/webp", "image/bmp"];

  // ---- checking a picture -----------------------------------------------------------------

  function readAsDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  function imageSize(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve({ width: img.naturalWidth, height: img.naturalHeight });
      img.onerror = () => reject(new Error("unreadable"));
      img.src = src;
    });
  }

  /** The server's picture checks (media.check_image_bytes), run before sending; null when fine. */
  function checkPicture(file, size, label) {
    const limits = S.pageData.limits || {};
    const type = (file.type || "").toLowerCase();
    // WebP and BMP are converted by the server (media.py); HEIC is left to the phone, which hands
    // the page a JPEG when the input does not list HEIC.
    const byName = /\.(jpe?g|png|webp|bmp)$/i.test(file.name || "");
    if (type ? ACCEPTED.indexOf(type) === -1 : !byName) {
      return t("image_type", { label: label });
    }
    if (limits.max_bytes && file.size > limits.max_bytes) {
      return t("image_bytes", { label: label });
    }
    if (!size) {
      return null;
    }
    const values = { label: label, w: size.width, h: size.height, min: limits.min_side, max: limits.max_aspect };
    if (limits.min_side && Math.min(size.width, size.height) < limits.min_side) {
      return t("image_small", values);
    }
    const ratio = size.width / size.height;
    if (limits.max_aspect && (ratio > limits.max_aspect || ratio < 1 / limits.max_aspect)) {
      return t("image_aspect", values);
    }
    if (limits.max_pixels && size.width * size.height > limits.max_pixels) {
      return t("image_pixels", { label: label, max: Math.round(limits.max_pixels / 1e6) });
    }
    return null;
  }

  /** The first file of a drop's or a paste's DataTransfer, or null. */
  function fileOf(transfer) {
    if (!transfer) {
      return null;
    }
    if (transfer.files && transfer.files[0]) {
      return transfer.files[0];
    }
    const item = Array.prototype.find.call(transfer.items || [], (i) => i.kind === "file");
    return item ? item.getAsFile() : null;
  }

  // ---- the drop zone ------------------------------------------------------------------------

  const zones = [];      // every drop zone of the page, in page order

  /** A picture pasted with the focus outside any field goes to the zone under the pointer, else
   * to the first visible, enabled zone that has no picture yet. */
  function pasteAnywhere(event) {
    const target = event.target;
    if (event.isDefaultPrevented() || $(target).closest("input, textarea, select, [contenteditable], .dropzone").length) {
      return;
    }
    const file = fileOf(event.originalEvent.clipboardData);
    const zone = zones.find((z) => z.open() && z.$zone.is(":hover")) || zones.find((z) => z.open());
    if (file && zone) {
      event.preventDefault();
      zone.take(file);
    }
  }
  $(document).on("paste", pasteAnywhere);

  /**
   * A drop zone for one picture ($field is its .field element). onChange(value) after every
   * change; value() is {file, dataUrl, name, bytes, width, height} or null.
   */
  function dropzone($field, onChange) {
    const $zone = $field.find(".dropzone");
    const $input = $zone.find('input[type="file"]');
    const label = $field.find(".form-label").first().contents().first().text().trim();
    let value = null;
    let disabled = false;

    function show(state) {
      $zone.find(".dropzone-empty").toggleClass("d-none", state !== "empty");
      $zone.find(".dropzone-loading").toggleClass("d-none", state !== "loading");
      $zone.find(".dropzone-preview").toggleClass("d-none", state !== "preview");
      $zone.toggleClass("has-picture", state === "preview");
    }
    function set(next) {
      value = next;
      if (next) {
        $zone.find(".dropzone-preview img").attr("src", next.dataUrl);
        $zone.find(".dz-name").text(next.name);
        $zone.find(".dz-size").text(t("size", { w: next.width, h: next.height }) + " · " + S.formatBytes(next.bytes));
        show("preview");
      } else {
        $zone.find(".dropzone-preview img").removeAttr("src");
        $input.val("");
        show("empty");
      }
      onChange(value);
    }
    function fail(message) {
      set(null);
      S.showError({ field: $field.data("field"), message: message }, $field.parent());
    }
    /** Take a picture however it came (picker, drop, paste, a studio URL): one check, one error. */
    async function take(file) {
      S.clearFieldError($field);
      const early = checkPicture(file, null, label);
      if (early) {
        fail(early);
        return false;
      }
      show("loading");
      try {
        const dataUrl = await readAsDataUrl(file);
        const size = await imageSize(dataUrl);
        const problem = checkPicture(file, size, label);
        if (problem) {
          fail(problem);
          return false;
        }
        set({ file: file, dataUrl: dataUrl, name: file.name || "", bytes: file.size, width: size.width, height: size.height });
        return true;
      } catch (err) {
        fail(t("image_unreadable", { label: label }));
        return false;
      }
    }
    /** Load a picture the studio serves (a result, or an earlier task's input). */
    async function takeUrl(source) {
      S.clearFieldError($field);
      show("loading");
      try {
        const response = await fetch(source, { credentials: "same-origin" });
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        const blob = await response.blob();
        const name = decodeURIComponent(new URL(source, window.location.href).pathname.split("/").pop() || "");
        return await take(new File([blob], name, { type: blob.type }));
      } catch (err) {
        fail(t("image_load_failed"));
        return false;
      }
    }

    $zone.on("click", (event) => {
      if (!disabled && !$(event.target).closest(".dz-remove").length && event.target !== $input[0]) {
        $input[0].click();
      }
    });
    $zone.on("keydown", (event) => {
      if (!disabled && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        $input[0].click();
      }
    });
    $input.on("change", () => {
      if ($input[0].files && $input[0].files[0]) {
        take($input[0].files[0]);
      }
    });
    $zone.on("dragenter dragover", (event) => {
      event.preventDefault();
      if (!disabled) {
        $zone.addClass("dragging");
      }
    });
    $zone.on("dragleave dragend", () => $zone.removeClass("dragging"));
    $zone.on("drop", (event) => {
      event.preventDefault();
      $zone.removeClass("dragging");
      const file = fileOf(event.originalEvent.dataTransfer);
      if (!disabled && file) {
        take(file);
      }
    });
    // Ctrl/Cmd+V while the zone has the focus (a click or Tab puts it there); a paste elsewhere on
    // the page is handed to a zone by pasteAnywhere below.
    $zone.on("paste", (event) => {
      const file = fileOf(event.originalEvent.clipboardData);
      if (!disabled && file) {
        event.preventDefault();
        take(file);
      }
    });
    zones.push({ $zone: $zone, take: take, open: () => !disabled && !value && $zone.is(":visible") });
    $zone.find(".dz-remove").on("click", (event) => {
      event.stopPropagation();
      S.clearFieldError($field);
      set(null);
    });

    return {
      value: () => value,
      clear: () => set(null),
      takeUrl: takeUrl,
      /** Disable the zone (with a note saying why), or enable it again. */
      setDisabled(isDisabled, note) {
        disabled = isDisabled;
        $zone.toggleClass("disabled", isDisabled).attr("aria-disabled", isDisabled ? "true" : null)
          .attr("tabindex", isDisabled ? "-1" : "0");
        $field.find(".dz-note").text(note || "");
      },
      note(text) {
        $field.find(".dz-note").text(text || "");
      },
    };
  }

  // ---- sending a form with its pictures -----------------------------------------------------

  /** The request's fields as FormData: pictures (Blobs) as file parts, numbers, booleans and
   * objects as their JSON (the server reads a non-text field's value as JSON), text as it is. */
  function formData(data) {
    const form = new FormData();
    Object.keys(data).forEach((name) => {
      const value = data[name];
      if (value === undefined || value === null) {
        return;
      }
      if (value instanceof Blob) {
        form.append(name, value, value.name || name);
      } else {
        form.append(name, typeof value === "string" ? value : JSON.stringify(value));
      }
    });
    return form;
  }

  function uploadTotal(data) {
    return Object.keys(data).reduce((sum, name) => sum + (data[name] instanceof Blob ? data[name].size : 0), 0);
  }

  /** The progress row of a form: shown while its upload runs, with a cancel button. */
  function progressRow($scope) {
    const $row = $($scope).find(".upload-progress").first();
    return {
      $cancel: $row.find(".upload-cancel"),
      show(visible) {
        $row.toggleClass("d-none", !visible);
      },
      update(loaded, total) {
        const percent = total ? Math.min(100, Math.round((loaded / total) * 100)) : 0;
        $row.find(".progress").attr("aria-valuenow", percent);
        $row.find(".progress-bar").css("width", percent + "%");
        $row.find(".upload-progress-text").text(loaded >= total && total
          ? t("upload_waiting")
          : t("upload_progress", { sent: S.formatBytes(loaded), total: S.formatBytes(total) }) + " · " + percent + " %");
      },
    };
  }

  function answerError(xhr) {
    let body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch (err) {
      body = null;
    }
    if (body && body.error && body.error.message) {
      return { code: body.error.code, message: body.error.message, field: body.error.field, status: xhr.status };
    }
    // A proxy in front of the studio (nginx) answers an oversized body with its own HTML page.
    const message = xhr.status === 413 ? t("upload_too_large") : t("server_error");
    return { code: "http_" + xhr.status, message: message, status: xhr.status };
  }

  /**
   * POST `data` to `url` as multipart/form-data, showing progress in the form `scope`.
   * Same contract as Studio.api: a jQuery promise resolving with the JSON body, rejecting with
   * {code, message, field, status} (shown next to its field; a cancel only leaves a toast).
   */
  function send(options) {
    const deferred = $.Deferred();
    const data = options.data || {};
    const total = uploadTotal(data);
    const row = progressRow(options.scope);
    const xhr = new XMLHttpRequest();
    let sent = 0;
    let ended = null;        // "cancelled" | "stalled" once we stop it ourselves
    let stall = null;

    function watchdog() {
      clearTimeout(stall);
      stall = setTimeout(() => {
        ended = "stalled";
        xhr.abort();
      }, STALL_MS);
    }
    function finish(error, body) {
      clearTimeout(stall);
      row.show(false);
      row.$cancel.off("click.upload");
      if (!error) {
        deferred.resolve(body);
        return;
      }
      if (error.code === "upload_cancelled") {
        S.toast(error.message, "secondary");
      } else if (!options.quiet) {
        S.showError(error, options.scope);
      }
      deferred.reject(error);
    }
    function failed() {
      const amounts = { sent: S.formatBytes(sent), total: S.formatBytes(total) };
      if (ended === "cancelled") {
        return { code: "upload_cancelled", message: t("upload_cancelled"), status: 0 };
      }
      if (ended === "stalled") {
        return { code: "upload_stalled", message: t("upload_stalled", amounts), status: 0 };
      }
      return { code: "network_error", message: t(total ? "upload_failed" : "connection_failed", amounts), status: 0 };
    }

    xhr.open("POST", options.url);
    xhr.setRequestHeader("Accept", "application/json");
    const token = $('meta[name="csrf-token"]').attr("content");
    if (token) {
      xhr.setRequestHeader("X-CSRFToken", token);
    }
    xhr.upload.onprogress = (event) => {
      sent = event.loaded;
      row.update(event.loaded, event.lengthComputable ? event.total : total);
      watchdog();
    };
    xhr.onprogress = watchdog;
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (err) {
        body = null;
      }
      finish(xhr.status >= 200 && xhr.status < 300 && body ? null : answerError(xhr), body);
    };
    xhr.onerror = () => finish(failed());
    xhr.onabort = () => finish(failed());
    row.$cancel.off("click.upload").on("click.upload", () => {
      ended = "cancelled";
      xhr.abort();
    });
    if (options.scope) {
      S.clearErrors(options.scope);
    }
    row.update(0, total);
    row.show(total > 0);
    watchdog();
    xhr.send(formData(data));
    return deferred.promise();
  }

  S.dropzone = dropzone;
  return { send: send, checkPicture: checkPicture, dropzone: dropzone, STALL_MS: STALL_MS };
}(jQuery, window.Studio));
