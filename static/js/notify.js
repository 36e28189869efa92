/*
 * What a generate page tells you about its tasks while you look elsewhere: the tab title and the
 * favicon count the tasks still running (and, while the tab is in the background, the ones that
 * ended), and, once you opt in with the page's alert button (kept in localStorage), a browser
 * notification and a soft tone when a task ends. The tone is made with WebAudio: no audio file.
 * generate.js hands every task it shows to track(); nothing here asks the server.
 */
window.Studio.notify = (function ($, S) {
  "use strict";

  const STORAGE_KEY = "studio.alerts";
  const baseTitle = document.title;
  const $icon = $('link[rel="icon"]').first();
  const baseIcon = { href: $icon.attr("href"), type: $icon.attr("type") };
  const statuses = {};        // task id -> the status last seen
  let endedUnseen = 0;        // tasks that ended while the tab was in the background
  let audio = null;

  function stored() {
    try {
      return window.localStorage.getItem(STORAGE_KEY) === "on";
    } catch (err) {
      return false;       // storage switched off: alerts stay off
    }
  }

  function store(on) {
    try {
      window.localStorage.setItem(STORAGE_KEY, on ? "on" : "off");
    } catch (err) {
      // Nothing to keep it in: it lasts as long as the page.
    }
  }

  let alertsOn = stored();

  function running() {
    return Object.keys(statuses).filter((id) => S.ACTIVE.indexOf(statuses[id]) !== -1).length;
  }

  /** The favicon with a round badge: the count of ended tasks (green), else of running ones (blue). */
  function drawIcon(count, ended) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 32;
    const ctx = canvas.getContext("2d");
    if (!ctx) {
      return null;
    }
    ctx.fillStyle = "#0d6efd";
    if (ctx.roundRect) {
      ctx.beginPath();
      ctx.roundRect(1, 5, 30, 22, 6);
      ctx.fill();
    } else {
      ctx.fillRect(1, 5, 30, 22);
    }
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.moveTo(12, 10);
    ctx.lineTo(12, 22);
    ctx.lineTo(21, 16);
    ctx.fill();
    ctx.fillStyle = ended ? "#198754" : "#fd7e14";
    ctx.beginPath();
    ctx.arc(23, 9, 9, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.font = "bold 13px sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(count > 9 ? "9+" : String(count), 23, 10);
    return canvas.toDataURL("image/png");
  }

  function render() {
    const active = running();
    const parts = [];
    if (active) {
      parts.push(String(active));
    }
    if (endedUnseen) {
      parts.push("✓" + endedUnseen);
    }
    document.title = parts.length ? "(" + parts.join(" · ") + ") " + baseTitle : baseTitle;
    const icon = parts.length ? drawIcon(endedUnseen || active, endedUnseen > 0) : null;
    if (icon) {
      $icon.attr({ href: icon, type: "image/png" });
    } else {
      $icon.attr(baseIcon);
    }
  }

  function tone() {
    if (!audio) {
      return;
    }
    const start = audio.currentTime;
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = "sine";
    osc.frequency.setValueAtTime(880, start);
    osc.frequency.exponentialRampToValueAtTime(660, start + 0.35);
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.08, start + 0.03);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.6);
    osc.connect(gain).connect(audio.destination);
    osc.start(start);
    osc.stop(start + 0.65);
  }

  function announce(task) {
    if (!alertsOn) {
      return;
    }
    tone();
    if (window.Notification && Notification.permission === "granted" && document.hidden) {
      const body = [S.t("status." + task.status), task.model, (task.params && task.params.prompt) || ""]
        .filter(Boolean).join(" · ");
      new Notification("AIAPI Studio", { body: body.slice(0, 180), tag: "task-" + task.id });
    }
  }

  /** Note a task's latest state (every answer about a task the page shows). */
  function track(task) {
    const before = statuses[task.id];
    statuses[task.id] = task.status;
    const ended = before !== undefined && S.ACTIVE.indexOf(before) !== -1 && S.ACTIVE.indexOf(task.status) === -1;
    if (ended) {
      if (document.hidden) {
        endedUnseen += 1;
      }
      announce(task);
    }
    render();
  }

  function showButton($button) {
    $button.attr("aria-pressed", alertsOn ? "true" : "false").toggleClass("active", alertsOn);
    $button.find(".alerts-off").toggleClass("d-none", alertsOn);
    $button.find(".alerts-on").toggleClass("d-none", !alertsOn);
  }

  /** Browsers let a page make sound only after a user gesture: start the audio on one. */
  function unlockAudio() {
    const Context = window.AudioContext || window.webkitAudioContext;
    audio = audio || (Context ? new Context() : null);
    if (audio && audio.state === "suspended") {
      audio.resume();
    }
  }

  /** The alert button: its click (a user gesture) asks for the notification permission too. */
  function button($button) {
    showButton($button);
    $button.on("click", () => {
      alertsOn = !alertsOn;
      store(alertsOn);
      if (alertsOn) {
        unlockAudio();
        if (window.Notification && Notification.permission === "default") {
          Notification.requestPermission();
        }
      }
      showButton($button);
    });
  }

  // Alerts kept on from an earlier visit: the first click or key on the page starts the audio.
  ["pointerdown", "keydown"].forEach((name) => document.addEventListener(name, () => {
    if (alertsOn) {
      unlockAudio();
    }
  }, { once: true }));

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && endedUnseen) {
      endedUnseen = 0;
      render();
    }
  });

  return { track: track, button: button, enabled: () => alertsOn };
}(jQuery, window.Studio));
