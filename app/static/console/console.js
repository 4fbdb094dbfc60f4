// CareCall coordinator console: live queue, alert sound, keyboard shortcuts, word seeking.
// Loaded as a file (the CSP forbids inline scripts); every page's data comes from data-* attributes.
(function () {
  "use strict";

  const root = document.querySelector(".console");
  if (!root) return;
  const csrf = document.querySelector('meta[name="csrf-token"]');

  function typing(event) {
    const t = event.target;
    return event.ctrlKey || event.metaKey || event.altKey ||
      (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName)));
  }

  function post(url, fields) {
    const body = new URLSearchParams(fields);
    return fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrf ? csrf.content : "", Accept: "application/json" },
    });
  }

  // ---- Every page: copy buttons, and forms that ask before they act -------
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.hidden = false;
    button.addEventListener("click", () => {
      const done = document.getElementById(button.dataset.copyStatus);
      const code = button.previousElementSibling;
      navigator.clipboard.writeText(button.dataset.copy)
        .then(() => { if (done) done.textContent = "Copied."; })
        .catch(() => {
          // No clipboard (a page not served over HTTPS): select it for a person to copy.
          const range = document.createRange();
          range.selectNodeContents(code);
          window.getSelection().removeAllRanges();
          window.getSelection().addRange(range);
          if (done) done.textContent = "Selected: press Ctrl+C to copy.";
        });
    });
  });

  // ---- The queue ----------------------------------------------------------
  function queuePage() {
    const live = document.getElementById("queue-live");
    const alertBox = document.getElementById("critical-alert");
    const soundNote = document.getElementById("sound-note");
    const status = document.getElementById("live-status");
    const pollMs = parseInt(root.dataset.pollMs, 10) || 3000;
    const sound = new Audio(root.dataset.alertSrc);
    sound.preload = "auto";
    let selectedId = null;
    let busy = false;

    function pinnedIds() {
      const section = live.querySelector("[data-pinned-ids]");
      const ids = section ? section.dataset.pinnedIds : "";
      return new Set(ids ? ids.split(",") : []);
    }
    let knownCritical = pinnedIds();

    function links() {
      return Array.from(live.querySelectorAll("a.row-link"));
    }

    function select(link, focus) {
      live.querySelectorAll("tr.selected").forEach((tr) => tr.classList.remove("selected"));
      if (!link) { selectedId = null; return; }
      const row = link.closest("tr");
      row.classList.add("selected");
      selectedId = row.dataset.id;
      if (focus) link.focus({ preventScroll: false });
    }

    function playAlert() {
      sound.currentTime = 0;
      const played = sound.play();
      if (played && played.catch) {
        played.then(() => { soundNote.hidden = true; root.dataset.alertPlayed = "1"; })
          .catch(() => { soundNote.hidden = false; });
      }
    }

    document.getElementById("enable-sound").addEventListener("click", () => {
      soundNote.hidden = true;
      playAlert();
    });

    function announce(newIds) {
      const rows = Array.from(newIds).map((id) => live.querySelector(`tr[data-id="${id}"]`))
        .filter(Boolean);
      alertBox.textContent = "";
      const strong = document.createElement("span");
      strong.textContent = rows.length > 1
        ? `${rows.length} new critical requests: `
        : "New critical request: ";
      alertBox.appendChild(strong);
      rows.forEach((row, i) => {
        const a = document.createElement("a");
        a.href = row.querySelector("a.row-link").href;
        a.textContent = `#${row.dataset.id} ${row.cells[2].textContent.trim()}`;
        if (i) alertBox.appendChild(document.createTextNode(", "));
        alertBox.appendChild(a);
      });
      alertBox.hidden = false;
      playAlert();
    }

    function refresh() {
      if (busy) return Promise.resolve();
      busy = true;
      const url = root.dataset.rowsUrl + window.location.search;
      return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then((response) => {
          if (response.redirected || response.status === 401 || response.status === 403) {
            status.textContent = "Your session ended: reload the page to log in again.";
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then((html) => {
          if (html === null) return;
          const hadFocus = live.contains(document.activeElement);
          const picked = new Set(Array.from(live.querySelectorAll("input.bulk-pick:checked"))
            .map((box) => box.value));
          const doc = new DOMParser().parseFromString(html, "text/html");
          live.replaceChildren(...Array.from(doc.body.childNodes));
          // Keep what the coordinator ticked for a bulk action.
          live.querySelectorAll("input.bulk-pick").forEach((box) => {
            box.checked = picked.has(box.value);
          });
          // Keep the coordinator's place: same selected request, same focus.
          if (selectedId) {
            const row = live.querySelector(`tr[data-id="${selectedId}"]`);
            if (row) select(row.querySelector("a.row-link"), hadFocus);
          }
          const now = pinnedIds();
          const fresh = new Set([...now].filter((id) => !knownCritical.has(id)));
          knownCritical = now;
          if (fresh.size) announce(fresh);
          status.textContent = `Updated at ${new Date().toLocaleTimeString()}.`;
        })
        .catch(() => { status.textContent = "Could not reach the server; retrying."; })
        .finally(() => { busy = false; });
    }

    function move(step) {
      const all = links();
      if (!all.length) return;
      let i = all.findIndex((a) => a.closest("tr").dataset.id === selectedId);
      i = i < 0 ? 0 : Math.min(all.length - 1, Math.max(0, i + step));
      select(all[i], true);
    }

    function setStatus(value) {
      if (!selectedId || !root.dataset.canAct) return;
      const id = selectedId;
      post(`${root.dataset.rowsUrl.replace(/rows$/, "")}requests/${id}/status`, { status: value })
        .then((response) => response.json().catch(() => ({})).then((body) => [response, body]))
        .then(([response, body]) => {
          // Confirmations go where flashed messages go, so the next poll does not erase them.
          // A step back (409) is never taken from the queue: it is done on the request's page.
          const note = document.createElement("p");
          note.className = response.ok ? "flash flash-ok" : "flash flash-error";
          note.textContent = response.ok
            ? `Request #${id} is now ${value}.`
            : (body.error || `Could not change request #${id}.`);
          document.querySelector(".flashes").replaceChildren(note);
          return refresh();
        });
    }

    function toggleSelected() {
      const row = selectedId && live.querySelector(`tr[data-id="${selectedId}"]`);
      const box = row && row.querySelector("input.bulk-pick");
      if (box) box.checked = !box.checked;
    }

    live.addEventListener("focusin", (event) => {
      const link = event.target.closest && event.target.closest("a.row-link");
      if (link) select(link, false);
    });

    document.addEventListener("keydown", (event) => {
      if (typing(event)) return;
      const actions = {
        j: () => move(1),
        k: () => move(-1),
        "/": () => document.getElementById("q").focus(),
        t: () => setStatus("triaged"),
        a: () => setStatus("assigned"),
        x: () => toggleSelected(),
        r: () => refresh(),
      };
      const act = actions[event.key];
      if (act) { event.preventDefault(); act(); }
    });

    window.setInterval(refresh, pollMs);

    // Straight to work: the first request has the focus (after login too), unless the
    // coordinator came for the search box or a link into the page.
    if (!window.location.hash && document.activeElement === document.body) {
      const first = links()[0];
      if (first) select(first, true);
      else live.focus();
    }
  }

  // ---- One request --------------------------------------------------------
  function requestPage() {
    const player = document.getElementById("player");
    document.querySelectorAll("button.word[data-start]").forEach((button) => {
      button.addEventListener("click", () => {
        if (!player) return;
        player.currentTime = parseFloat(button.dataset.start) || 0;
        const played = player.play();
        if (played && played.catch) played.catch(() => {});
      });
    });

    // The server asks before a step back (assigned to triaged): the form posts as ever.
    function setStatus(value) {
      const form = document.getElementById("status-form");
      if (!form) return;
      form.querySelector("select").value = value;
      form.requestSubmit();
    }

    function focus(id) {
      const el = document.getElementById(id);
      if (el) el.focus();
    }

    document.addEventListener("keydown", (event) => {
      if (typing(event)) return;
      const actions = {
        p: () => { if (player) { if (player.paused) player.play(); else player.pause(); } },
        "[": () => { if (player) player.currentTime = Math.max(0, player.currentTime - 5); },
        "]": () => { if (player) player.currentTime += 5; },
        c: () => focus("category"),
        e: () => focus("transcript"),
        n: () => focus("note-body"),
        t: () => setStatus("triaged"),
        a: () => setStatus("assigned"),
        d: () => setStatus("done"),
        b: () => { window.location.href = root.dataset.queueUrl; },
      };
      const act = actions[event.key];
      if (act) { event.preventDefault(); act(); }
    });
  }

  if (root.dataset.page === "queue") queuePage();
  if (root.dataset.page === "request") requestPage();
})();
