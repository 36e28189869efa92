/*
 * The account page: API keys (made, shown once, deleted), the admin's users, the password, and
 * the default webhook URL with its signing secret (shown once).
 * Deleting asks for a second click on the same button instead of a dialog.
 */
$(function () {
  "use strict";

  const S = window.Studio;
  const data = S.pageData;
  const urls = data.urls;

  function made(seconds) {
    return S.formatTime(new Date(seconds * 1000).toISOString());
  }

  /** A delete button that needs a second click within a few seconds. */
  function deleteButton(onConfirm) {
    const $button = $("<button>", { type: "button", class: "btn btn-sm btn-outline-danger" }).text(S.t("delete"));
    let armed = null;
    $button.on("click", function () {
      if (!armed) {
        $button.removeClass("btn-outline-danger").addClass("btn-danger").text(S.t("confirm_delete"));
        armed = setTimeout(function () {
          armed = null;
          $button.removeClass("btn-danger").addClass("btn-outline-danger").text(S.t("delete"));
        }, 4000);
        return;
      }
      clearTimeout(armed);
      $button.prop("disabled", true);
      onConfirm();
    });
    return $button;
  }

  // ---- API keys

  function loadKeys() {
    S.api({ url: urls.keys, scope: "#keys-card" }).then(function (body) {
      const $list = $("#key-list").empty();
      body.keys.forEach(function (key) {
        $list.append($("<tr>").append(
          $("<td>").text(key.name),
          $("<td>").append($("<code>").text(key.hint)),
          $("<td>", { class: "small" }).text((key.scopes || []).map((s) => S.t("scope_" + s)).join(", ")),
          $("<td>", { class: "small text-secondary" }).text(made(key.created_at)),
          $("<td>", { class: "small text-secondary" }).text(key.expires_at ? made(key.expires_at) : S.t("never")),
          $("<td>", { class: "text-end" }).append(deleteButton(function () {
            S.api({ url: urls.key.replace("__ID__", encodeURIComponent(key.id)), method: "DELETE",
                    scope: "#keys-card" }).then(function () {
              S.toast(S.t("key_deleted"));
              loadKeys();
            });
          }))));
      });
      $("#no-keys").toggleClass("d-none", body.keys.length > 0);
    });
  }

  $("#key-form").on("submit", function (event) {
    event.preventDefault();
    const scopes = $(".key-scope:checked").map(function () { return this.value; }).get();
    S.api({ url: urls.keys, method: "POST", scope: this,
            data: { name: $("#key-name").val(), scopes: scopes, expires_in_days: number("#key-days") } })
      .then(function (body) {
        $("#new-key-value").text(body.key);
        $("#new-key").removeClass("d-none");
        $("#key-name").val("");
        loadKeys();
      });
  });

  // ---- users (admin)

  const LIMITS = ["images_per_day", "videos_per_day", "max_duration", "max_resolution", "max_in_flight"];

  function loadUsers() {
    S.api({ url: urls.users, scope: "#users-card" }).then(function (body) {
      const $list = $("#user-list").empty();
      body.users.forEach(function (user) {
        const $actions = $("<td>", { class: "text-end" });
        if (user.role !== "admin") {
          $actions.append(deleteButton(function () {
            S.api({ url: urls.user.replace("__ID__", encodeURIComponent(user.id)), method: "DELETE",
                    scope: "#users-card" }).then(function () {
              S.toast(S.t("user_deleted"));
              loadUsers();
            });
          }));
        }
        const $row = $("<tr>", { "data-user": user.id }).append(
          $("<td>").text(user.username),
          $("<td>").text(user.role === "admin" ? S.t("role_admin") : S.t("role_user")));
        LIMITS.forEach(function (name) {
          $row.append($("<td>").append($("<input>", {
            class: "form-control form-control-sm limit-input", type: "number", min: 0, step: 1,
            "data-limit": name, "aria-label": name, placeholder: S.t("no_limit"),
          }).val(user.limits[name] === null ? "" : user.limits[name])));
        });
        $row.append($("<td>", { class: "small text-secondary" }).text(S.t("spent_today", {
          images: S.formatNumber(user.usage.images.used), videos: S.formatNumber(user.usage.videos.used) })));
        $actions.prepend($("<button>", { type: "button", class: "btn btn-sm btn-outline-primary me-1 save-limits" })
          .text(S.t("save")).on("click", function () {
            const limits = {};
            $row.find(".limit-input").each(function () {
              limits[$(this).data("limit")] = this.value === "" ? null : Number(this.value);
            });
            S.api({ url: urls.user.replace("__ID__", encodeURIComponent(user.id)), method: "PATCH",
                    data: limits, scope: "#users-card" }).then(function () {
              S.toast(S.fmt(S.t("limits_saved"), { name: user.username }), "success");
              loadUsers();
            });
          }));
        $list.append($row.append($actions));
      });
    });
  }

  function number(selector) {
    const raw = $(selector).val();
    return raw === "" ? null : Number(raw);
  }

  $("#user-form").on("submit", function (event) {
    event.preventDefault();
    const form = this;
    S.api({ url: urls.users, method: "POST", scope: form, data: {
      username: $("#new-username").val(), password: $("#new-password").val(),
      images_per_day: number("#new-images"), videos_per_day: number("#new-videos"),
      max_duration: number("#new-duration"), max_resolution: number("#new-resolution"),
      max_in_flight: number("#new-in-flight"),
    } }).then(function (user) {
      form.reset();
      S.toast(S.fmt(S.t("user_added"), { name: user.username }), "success");
      loadUsers();
    });
  });

  // ---- password

  $("#password-form").on("submit", function (event) {
    event.preventDefault();
    const form = this;
    S.api({ url: urls.password, method: "POST", scope: form, data: {
      current_password: $("#current-password").val(), new_password: $("#new-password-own").val(),
      revoke_keys: $("#revoke-keys").is(":checked") ? "all" : null,
    } }).then(function () {
      form.reset();
      S.toast(S.t("password_changed"), "success");
      loadKeys();
    });
  });

  // ---- webhook

  $("#webhook-form").on("submit", function (event) {
    event.preventDefault();
    $("#webhook-saved").addClass("d-none");
    S.api({ url: urls.webhook, method: "PUT", scope: this, data: { url: $("#webhook-url").val().trim() || null } })
      .then(function (answer) {
        $("#webhook-url").val(answer.url || "");
        $("#webhook-saved").removeClass("d-none");
      });
  });

  $("#webhook-secret").on("click", function () {
    S.api({ url: urls.webhook_secret, method: "POST", scope: $("#webhook-form")[0] }).then(function (answer) {
      $("#new-secret-value").text(answer.secret);
      $("#new-secret").removeClass("d-none");
    });
  });

  loadKeys();
  if (data.admin) {
    loadUsers();
  }
});
