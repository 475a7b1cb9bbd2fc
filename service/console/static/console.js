// topup 运营后台: the few live parts, without a framework.
// An element with data-refresh="URL" and data-every="SECONDS" has its inner HTML
// replaced by what URL answers (a fragment), every SECONDS, while the page is visible.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    const every = Number(el.dataset.every || 10) * 1000;
    setInterval(async () => {
      if (document.hidden) return;
      try {
        const reply = await fetch(el.dataset.refresh, { credentials: "same-origin" });
        if (reply.ok) el.innerHTML = await reply.text();
      } catch (_) { /* the next tick tries again */ }
    }, every);
  }
  // Forms that change money or routes ask once more before they go.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
