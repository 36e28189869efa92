/*
 * The gallery: succeeded tasks' results in justified rows at their true aspect ratio (each tile
 * grows in proportion to width/height, so a row shares one height), the tasks page's filters
 * (filters.js), more results as the end comes into view; a lightbox (previous/next, arrow keys,
 * Esc, zoom to 2× by click or wheel, drag to pan, video play, "make a video from this"); a
 * selection of tasks for compare, download as one zip and delete; favourites (a star on the task).
 */
$(function () {
  "use strict";
  const S = Studio;
  const data = S.pageData;
  const PAGE_SIZE = data.page_size || 30;
  const $gallery = $("#gallery");
  const $filters = $("#task-filters");
  const $lightbox = $("#lightbox");
  const $compare = $("#compare-modal");
  const $bulk = $("#bulk-delete-modal");
  const tiles = [];           // {task, output, index}: every result shown, in order
  const tasksById = {};
  const selected = new Set();     // task ids
  let total = 0;
  let loaded = 0;             // tasks fetched so far
  let request = 0;
  let loading = null;
  let current = -1;           // the tile in the lightbox

  function say(key, values) {
    return S.fmt((data.strings || {})[key] || key, values);
  }

  // ---- filters and the URL ------------------------------------------------------------------

  const filter = S.taskFilters($filters, () => reload());

  function writeUrl() {
    const query = new URLSearchParams(filter.values()).toString();
    history.replaceState(null, "", window.location.pathname + (query ? "?" + query : ""));
  }

  // ---- the list ----------------------------------------------------------------------------

  function state(templateId, message) {
    const $state = S.fromTemplate(templateId);
    $state.find(".state-message").text(message || "");
    $gallery.empty().append($state);
  }

  function reload() {
    tiles.length = 0;
    Object.keys(tasksById).forEach((id) => delete tasksById[id]);
    selected.clear();
    selectionChanged();
    loaded = 0;
    total = 0;
    loading = null;
    writeUrl();
    $gallery.attr("aria-busy", "true");
    return more(true);
  }

  /** The next page of results (the first one with `fresh`, replacing what is shown). */
  function more(fresh) {
    if (loading) {
      return loading;
    }
    const mine = fresh ? ++request : request;
    const query = Object.assign({ status: "succeeded", offset: loaded, limit: PAGE_SIZE }, filter.values());
    loading = S.api({ url: S.url("tasks"), data: query, scope: $filters, quiet: true }).then((page) => {
      if (mine !== request) {
        return;
      }
      if (fresh) {
        $gallery.empty();
      }
      total = page.total;
      loaded += page.tasks.length;
      page.tasks.forEach(add);
      if (!tiles.length) {
        state(filter.isEmpty() ? "state-empty" : "state-no-match");
      }
      ending();
    }, (error) => {
      if (mine === request) {
        state("state-error", error.message);
      }
    }).always(() => {
      if (mine === request) {
        loading = null;
        $gallery.attr("aria-busy", "false");
        watchEnd();
      }
    });
    return loading;
  }

  function ending() {
    const done = loaded >= total;
    $("#gallery-more").toggleClass("d-none", done);
    $("#gallery-end").toggleClass("d-none", !done || !tiles.length).text(say("shown_all", { n: S.formatNumber(tiles.length) }));
  }

  function add(task) {
    tasksById[task.id] = task;
    (task.outputs || []).forEach((output, i) => {
      if (!output.url) {
        return;
      }
      const index = tiles.length;
      tiles.push({ task: task, output: output, index: i });
      $gallery.append(tile(task, output, index));
    });
  }

  function ratioOf(output) {
    const ratio = output.width && output.height ? output.width / output.height : 1;
    return Math.min(4, Math.max(0.25, ratio));
  }

  function tile(task, output, index) {
    const $tile = S.fromTemplate("tile-template").attr({ "data-task-id": task.id, "data-tile": index, "data-kind": task.kind });
    const ratio = ratioOf(output);
    // Justified rows: grow in proportion to the shape, from a basis of the row height.
    $tile.css({ flexGrow: ratio, flexBasis: "calc(var(--g-row) * " + ratio.toFixed(4) + ")" });
    $tile.find(".g-open").css("aspectRatio", String(ratio));
    const $img = $tile.find("img").attr("src", output.thumbnail_url || output.url).attr("alt", task.params.prompt || "");
    if (output.width) {
      $img.attr({ width: output.width, height: output.height });
    }
    $tile.find(".g-play").toggleClass("d-none", task.kind !== "video");
    $tile.find(".g-open").attr("title", task.params.prompt || say("no_prompt"));
    $tile.find(".g-star").toggleClass("d-none", task.owner !== data.user_id && !task.favourite)
      .prop("disabled", task.owner !== data.user_id);
    starShown(task);
    $tile.find("input[type=checkbox]").prop("checked", selected.has(task.id));
    return $tile;
  }

  // More as the end of the list comes into view (the button stays for keyboards and old browsers).
  const sentinel = document.getElementById("gallery-more-wrap");
  const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && loaded < total) {
      more(false);
    }
  }, { rootMargin: "600px 0px" }) : null;

  function watchEnd() {
    if (observer) {
      observer.unobserve(sentinel);
      observer.observe(sentinel);
    }
  }

  $("#gallery-more").on("click", () => more(false));
  $gallery.on("click", ".clear-filters", filter.clear);
  $gallery.on("click", ".reload", () => reload());

  // ---- favourites ----------------------------------------------------------------------------

  function starShown(task) {
    const $stars = $gallery.find('[data-task-id="' + $.escapeSelector(task.id) + '"] .g-star');
    $stars.toggleClass("on", Boolean(task.favourite)).attr("aria-pressed", task.favourite ? "true" : "false");
    if (current >= 0 && tiles[current].task.id === task.id) {
      $("#lightbox-star").toggleClass("active", Boolean(task.favourite)).attr("aria-pressed", task.favourite ? "true" : "false")
        .text(task.favourite ? say("unfavourite") : say("favourite"));
    }
  }

  function toggleStar(task) {
    const wanted = !task.favourite;
    return S.api({ url: data.urls.favourite.replace("__ID__", encodeURIComponent(task.id)), method: "POST",
      data: { favourite: wanted } }).then((updated) => {
      task.favourite = updated.favourite;
      starShown(task);
      S.toast(say(updated.favourite ? "starred" : "unstarred"));
    });
  }

  $gallery.on("click", ".g-star", function (event) {
    event.stopPropagation();
    toggleStar(tasksById[$(this).closest("[data-task-id]").attr("data-task-id")]);
  });
  $("#lightbox-star").on("click", () => toggleStar(tiles[current].task));

  // ---- selection -----------------------------------------------------------------------------

  function selectionChanged() {
    const n = selected.size;
    $("#selection-bar").toggleClass("d-none", n === 0 && !$gallery.hasClass("selecting"));
    $("#selection-count").text(say("selected", { n: S.formatNumber(n) }));
    $("#compare").prop("disabled", n < 2);
    $("#download-zip, #delete-selected").prop("disabled", n === 0);
    $gallery.find(".g-tile").each(function () {
      const on = selected.has($(this).attr("data-task-id"));
      $(this).toggleClass("selected", on).find("input[type=checkbox]").prop("checked", on);
    });
  }

  function setSelecting(on) {
    $gallery.toggleClass("selecting", on);
    $("#select-mode").toggleClass("active", on).attr("aria-pressed", on ? "true" : "false");
    if (!on) {
      selected.clear();
    }
    selectionChanged();
  }

  $("#select-mode").on("click", () => setSelecting(!$gallery.hasClass("selecting")));
  $gallery.on("change", ".g-check input", function () {
    const id = $(this).closest("[data-task-id]").attr("data-task-id");
    if (this.checked) {
      selected.add(id);
    } else {
      selected.delete(id);
    }
    $gallery.addClass("selecting");
    $("#select-mode").addClass("active").attr("aria-pressed", "true");
    selectionChanged();
  });
  $("#select-all").on("click", () => {
    tiles.forEach((t) => selected.add(t.task.id));
    selectionChanged();
  });
  $("#select-none").on("click", () => setSelecting(false));

  // In select mode a click on a tile selects it; otherwise it opens the lightbox.
  $gallery.on("click", ".g-open", function () {
    const $tile = $(this).closest(".g-tile");
    if ($gallery.hasClass("selecting")) {
      $tile.find(".g-check input").prop("checked", !selected.has($tile.attr("data-task-id"))).trigger("change");
    } else {
      openLightbox(Number($tile.attr("data-tile")));
    }
  });

  // ---- bulk download and delete ------------------------------------------------------------------

  function saveBlob(blob, name) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }

  $("#download-zip").on("click", async function () {
    const $button = $(this);
    S.clearErrors("#selection-bar");
    S.busy($button, true);
    try {
      const response = await fetch(data.urls.zip, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/zip, application/json",
          "X-CSRFToken": $('meta[name="csrf-token"]').attr("content") || "" },
        body: JSON.stringify({ task_ids: Array.from(selected) }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw body.error || { message: say("zip_failed") };
      }
      const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      saveBlob(await response.blob(), name ? name[1] : "studio.zip");
    } catch (error) {
      S.showError({ message: error.message || say("zip_failed") }, "#selection-bar");
    } finally {
      S.busy($button, false);
      $button.prop("disabled", selected.size === 0);
    }
  });

  $("#delete-selected").on("click", () => {
    S.clearErrors($bulk);
    $("#bulk-delete-title").text(say("delete_title", { n: S.formatNumber(selected.size) }));
    bootstrap.Modal.getOrCreateInstance($bulk[0]).show();
  });

  $("#bulk-delete-ok").on("click", async function () {
    const $button = $(this).prop("disabled", true);
    let deleted = 0;
    try {
      for (const id of Array.from(selected)) {
        await S.api({ url: S.url("task", id), method: "DELETE", scope: $bulk });
        selected.delete(id);
        deleted += 1;
      }
      bootstrap.Modal.getOrCreateInstance($bulk[0]).hide();
    } catch (error) {
      // Shown in the dialog; what was deleted so far stays deleted.
    } finally {
      $button.prop("disabled", false);
      if (deleted) {
        S.toast(say("deleted", { n: S.formatNumber(deleted) }));
        const keep = new Set(selected);
        reload().then(() => {
          keep.forEach((id) => tasksById[id] && selected.add(id));
          selectionChanged();
        });
      }
    }
  });

  // ---- the lightbox ----------------------------------------------------------------------------

  const zoom = { scale: 1, x: 0, y: 0, dragging: null, moved: false };

  function applyZoom() {
    const $target = $("#lightbox-media").children().first();
    $target.css("transform", "translate(" + zoom.x + "px, " + zoom.y + "px) scale(" + zoom.scale + ")");
    $("#lightbox-stage").toggleClass("zoomed", zoom.scale > 1);
  }

  function setZoom(scale) {
    zoom.scale = scale;
    zoom.x = 0;
    zoom.y = 0;
    applyZoom();
  }

  function show(index) {
    current = index;
    const item = tiles[index];
    const task = item.task;
    const output = item.output;
    const $media = $("#lightbox-media").empty();
    if (task.kind === "video") {
      $media.append($("<video>", { controls: true, autoplay: true, playsinline: true, src: output.url,
        poster: output.thumbnail_url || null, preload: "auto" }));
    } else {
      $media.append($("<img>", { src: output.url, alt: task.params.prompt || "", draggable: "false" }));
    }
    setZoom(1);
    $lightbox.attr("data-tile", index);
    $("#lightbox-title").text(task.params.prompt || say("no_prompt"));
    $("#lightbox-position").text(say("position", { i: S.formatNumber(index + 1), n: S.formatNumber(tiles.length) + (loaded < total ? "+" : "") }));
    const facts = [filter.providerName(task.provider) + " / " + task.model];
    if (output.width) {
      facts.push(S.t("size", { w: output.width, h: output.height }));
    }
    if (output.duration) {
      facts.push(S.t("seconds", { n: Number(output.duration).toFixed(1) }));
    }
    $("#lightbox-facts").text(facts.join(" · "));
    $("#lightbox-download").attr("href", S.downloadUrl(output.url));
    $("#lightbox-task").attr("href", S.url("tasks_page") + "?task=" + encodeURIComponent(task.id));
    // A picture can start a video: the video page takes a studio media URL as its first frame.
    $("#lightbox-make-video").toggleClass("d-none", task.kind !== "image")
      .attr("href", S.url("video_page") + "?image=" + encodeURIComponent(output.url));
    $("#lightbox-star").toggleClass("d-none", task.owner !== data.user_id);
    starShown(task);
    $("#lightbox-prev").prop("disabled", index === 0);
    $("#lightbox-next").prop("disabled", index >= tiles.length - 1 && loaded >= total);
  }

  function openLightbox(index) {
    show(index);
    bootstrap.Modal.getOrCreateInstance($lightbox[0]).show();
  }

  function step(delta) {
    const next = current + delta;
    if (next < 0) {
      return;
    }
    if (next < tiles.length) {
      show(next);
    } else if (loaded < total) {
      more(false).then(() => next < tiles.length && show(next));
    }
  }

  $("#lightbox-prev").on("click", () => step(-1));
  $("#lightbox-next").on("click", () => step(1));
  // On the document: the keys work from the moment the lightbox opens, before it has the focus.
  $(document).on("keydown", (event) => {
    if (current >= 0 && (event.key === "ArrowRight" || event.key === "ArrowLeft")) {
      if ($(event.target).is("video") && zoom.scale === 1 && event.target.controls && document.activeElement === event.target) {
        return;     // the player's own seek keys
      }
      event.preventDefault();
      step(event.key === "ArrowRight" ? 1 : -1);
    }
  });
  $lightbox.on("hidden.bs.modal", () => {
    $("#lightbox-media").empty();       // stops a video
    current = -1;
  });

  // Zoom: a click or the wheel goes to 2× and back; dragging moves the zoomed picture.
  const stage = document.getElementById("lightbox-stage");
  stage.addEventListener("wheel", (event) => {
    if (!$(event.target).closest("#lightbox-media").length) {
      return;
    }
    event.preventDefault();
    setZoom(event.deltaY < 0 ? 2 : 1);
  }, { passive: false });
  stage.addEventListener("pointerdown", (event) => {
    if (!$(event.target).is("#lightbox-media img")) {
      return;
    }
    zoom.dragging = { x: event.clientX - zoom.x, y: event.clientY - zoom.y, startX: event.clientX, startY: event.clientY };
    zoom.moved = false;
    stage.setPointerCapture(event.pointerId);
  });
  stage.addEventListener("pointermove", (event) => {
    if (!zoom.dragging) {
      return;
    }
    if (Math.abs(event.clientX - zoom.dragging.startX) + Math.abs(event.clientY - zoom.dragging.startY) > 4) {
      zoom.moved = true;
    }
    if (zoom.scale > 1 && zoom.moved) {
      zoom.x = event.clientX - zoom.dragging.x;
      zoom.y = event.clientY - zoom.dragging.y;
      applyZoom();
    }
  });
  // The stage holds the pointer while dragging, so the end of a press is told by `moved`, not its target.
  // A swipe across an unzoomed picture pages, as the arrow keys do.
  stage.addEventListener("pointerup", (event) => {
    if (!zoom.dragging) {
      return;
    }
    const dx = event.clientX - zoom.dragging.startX;
    zoom.dragging = null;
    if (!zoom.moved) {
      setZoom(zoom.scale > 1 ? 1 : 2);
    } else if (zoom.scale === 1 && Math.abs(dx) > 60) {
      step(dx < 0 ? 1 : -1);
    }
  });

  // ---- compare ---------------------------------------------------------------------------------

  let syncing = false;

  /** Videos side by side play, pause and seek together: one event is copied to the others. */
  function syncVideos($videos) {
    $videos.on("play pause seeked", function (event) {
      if (syncing) {
        return;
      }
      syncing = true;
      const leader = this;
      $videos.each(function () {
        if (this === leader) {
          return;
        }
        if (event.type === "seeked" || Math.abs(this.currentTime - leader.currentTime) > 0.15) {
          this.currentTime = Math.min(leader.currentTime, this.duration || leader.currentTime);
        }
        if (event.type === "play") {
          this.play().catch(() => {});
        } else if (event.type === "pause") {
          this.pause();
        }
      });
      setTimeout(() => {
        syncing = false;
      }, 50);
    });
  }

  $("#compare").on("click", () => {
    const $grid = $("#compare-grid").empty();
    const chosen = tiles.filter((t) => selected.has(t.task.id));
    $grid.attr("data-count", Math.min(chosen.length, 4));
    chosen.forEach((item) => {
      const $cell = $("<figure>", { class: "compare-cell mb-0" });
      if (item.task.kind === "video") {
        $cell.append($("<video>", { controls: true, muted: true, playsinline: true, loop: true, preload: "auto", src: item.output.url }));
      } else {
        $cell.append($("<img>", { src: item.output.url, alt: item.task.params.prompt || "" }));
      }
      $cell.append($("<figcaption>", { class: "small text-secondary mt-1 text-truncate" })
        .text((item.task.params.prompt || say("no_prompt")) + " · " + filter.providerName(item.task.provider) + " / " + item.task.model));
      $grid.append($cell);
    });
    const $videos = $grid.find("video");
    $videos.prop("muted", true);
    syncVideos($videos);
    $("#compare-play").toggleClass("d-none", $videos.length < 1);
    bootstrap.Modal.getOrCreateInstance($compare[0]).show();
  });
  $("#compare-play").on("click", () => {
    const videos = $("#compare-grid video").get();
    syncing = true;
    videos.forEach((v) => {
      v.currentTime = 0;
    });
    Promise.all(videos.map((v) => v.play().catch(() => {}))).then(() => {
      syncing = false;
    });
  });
  $compare.on("hidden.bs.modal", () => $("#compare-grid").empty());

  // ---- start -----------------------------------------------------------------------------------

  filter.read(new URLSearchParams(window.location.search));
  filter.providers.then(() => {
    if (current >= 0) {
      show(current);        // the provider's name, now translated
    }
  });
  reload();
});
