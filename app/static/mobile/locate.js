// Adds the volunteer's position to a check-in, only when they allow it. Without this script,
// or when they say no, or the phone cannot tell, the check-in goes without one: no field is sent.
(function () {
  "use strict";
  const form = document.querySelector("form[data-locate]");
  if (!form || !("geolocation" in navigator)) return;
  const status = form.querySelector("[data-locate-status]");
  // An unanswered permission prompt must not hold the check-in back for long.
  const PATIENCE_MS = 20000;
  let sent = false;

  function send() {
    if (sent) return;
    sent = true;
    form.submit();
  }

  function field(name, value) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = String(value);
    form.appendChild(input);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (sent) return;
    if (status) status.textContent = "Checking in…";
    const timer = setTimeout(send, PATIENCE_MS);
    navigator.geolocation.getCurrentPosition(
      function (position) {
        clearTimeout(timer);
        if (sent) return;
        field("latitude", position.coords.latitude);
        field("longitude", position.coords.longitude);
        field("accuracy_m", position.coords.accuracy);
        send();
      },
      function () {
        clearTimeout(timer);
        send();
      },
      { enableHighAccuracy: true, timeout: 10000, maximumAge: 60000 },
    );
  });
})();
