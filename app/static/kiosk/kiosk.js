// The one-button kiosk page: press, speak, hear it read back, confirm, get a number.
import { Courier, store } from "./outbox.js";
import { Recording } from "./recorder.js";

const settings = JSON.parse(document.getElementById("kiosk-settings").textContent);
const words = settings.words;
const TOKEN_KEY = "carecall.kiosk.token";
const $ = (id) => document.getElementById(id);

let screen = "talk";
let recording = null;
let current = null; // { clientId, requestId } of the person at the tablet now
let resetTimer = null;
let pollTimer = null;

// --- the token: opened once as /kiosk?token=..., then kept in localStorage -------------

function takeTokenFromAddress() {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token) {
    localStorage.setItem(TOKEN_KEY, token);
    params.delete("token");
    const query = params.toString();
    // The token must not stay on screen or in the history.
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
  }
  return localStorage.getItem(TOKEN_KEY);
}

const token = () => localStorage.getItem(TOKEN_KEY) || "";

// --- screens ---------------------------------------------------------------------------

const FOCUS = {
  talk: "talk",
  working: "working-heading",
  readback: "yes",
  phone: "phone-heading",
  done: "done-finish",
  saved: "saved-finish",
  problem: "problem-retry",
  setup: "setup-heading",
};

function show(name, { announce } = {}) {
  screen = name;
  clearTimeout(resetTimer);
  for (const section of document.querySelectorAll(".screen")) {
    section.hidden = section.id !== `screen-${name}`;
  }
  document.body.dataset.screen = name;
  const target = $(FOCUS[name]);
  if (target) {
    if (!target.matches("button, a")) target.tabIndex = -1;
    target.focus();
  }
  if (announce) $("announce").textContent = announce;
}

function after(seconds, action) {
  clearTimeout(resetTimer);
  resetTimer = setTimeout(action, seconds * 1000);
}

const spoken = []; // what the page has said aloud, newest last, for people testing it
const player = new Audio();

function hasVoice() {
  if (!("speechSynthesis" in window)) return false;
  const language = settings.language.toLowerCase();
  return speechSynthesis.getVoices().some((v) => v.lang.toLowerCase().startsWith(language));
}

function promptUrl(section, key) {
  return settings.promptSpeechUrl.replace("SECTION", section).replace("KEY", key);
}

// Say text with the browser's own voice, or else play the server's rendering of it.
async function say(text, audio) {
  if (!text) return;
  hush();
  if (hasVoice()) {
    spoken.push({ text, via: "browser" });
    const utterance = new SpeechSynthesisUtterance(text);
    utterance.lang = settings.language;
    utterance.rate = 0.9;
    speechSynthesis.speak(utterance);
    return;
  }
  const entry = { text, via: "server", played: false };
  spoken.push(entry);
  if (!audio) return;
  try {
    let source = audio.url;
    if (audio.auth) {
      const response = await fetch(audio.url, {
        headers: { Authorization: `Bearer ${token()}` },
        cache: "no-store",
      });
      if (!response.ok) throw new Error(`speech answered ${response.status}`);
      source = URL.createObjectURL(await response.blob());
    }
    if (player.dataset.blob) URL.revokeObjectURL(player.dataset.blob);
    player.dataset.blob = audio.auth ? source : "";
    player.src = source;
    await player.play();
    entry.played = true;
  } catch (error) {
    console.warn("could not say it aloud", error);
  }
}

function hush() {
  if ("speechSynthesis" in window) speechSynthesis.cancel();
  player.pause();
}

function setTalk(state) {
  const talk = $("talk");
  const recordingNow = state === "recording";
  talk.textContent = talk.dataset[state];
  talk.classList.toggle("recording", recordingNow);
  talk.classList.toggle("primary", !recordingNow);
  $("talk-heading").textContent = $("talk-heading").dataset[state];
  $("talk-text").textContent = $("talk-text").dataset[state];
  const preview = $("preview");
  if (preview) {
    preview.hidden = !recordingNow;
    if (!recordingNow) preview.srcObject = null;
  }
}

function welcome() {
  hush();
  current = null;
  clearTimeout(pollTimer);
  setTalk("idle");
  show("talk");
}

function problem(key) {
  current = null;
  const text = words.problems[key];
  $("problem-text").textContent = text;
  show("problem", { announce: text });
  say(text, { url: promptUrl("problems", key) });
  after(settings.resetSeconds, welcome);
}

// --- recording -------------------------------------------------------------------------

async function startRecording() {
  hush();
  current = null;
  setTalk("recording");
  const talk = $("talk");
  talk.disabled = true; // until the microphone is really on
  try {
    recording = await Recording.start({
      video: settings.mode === "video",
      silenceSeconds: settings.silenceSeconds,
      quietSeconds: settings.quietSeconds,
      maxSeconds: settings.maxSeconds,
      level: settings.silenceLevel,
      onAutoStop: () => finish(),
    });
  } catch (error) {
    console.warn("no microphone", error);
    recording = null;
    talk.disabled = false;
    setTalk("idle");
    problem("microphone");
    return;
  }
  talk.disabled = false;
  talk.focus();
  const preview = $("preview");
  if (preview) {
    preview.srcObject = recording.stream;
    preview.play().catch(() => {});
  }
  document.body.dataset.recording = "on";
}

async function finish() {
  if (!recording) return;
  const taken = recording;
  recording = null;
  performance.mark("kiosk-finished");
  const blob = await taken.stop("pressed");
  document.body.dataset.recording = "off";
  setTalk("idle");
  if (!taken.spoke || !blob.size) {
    problem("silent");
    return;
  }
  const item = {
    id: crypto.randomUUID(),
    kind: settings.mode === "video" ? "video" : "audio",
    language: settings.language,
    blob,
    createdAt: Date.now(),
  };
  current = { clientId: item.id, requestId: null, waiting: false };
  show("working", { announce: words.screens.working_text });
  await courier.send(item);
}

// --- after sending: poll for the readback ---------------------------------------------

function isCurrent(item) {
  return current && current.clientId === item.id;
}

function onSent(item, body) {
  if (!isCurrent(item)) return; // sent later for someone who has gone: nothing to show
  current.requestId = body.id;
  if (screen === "saved" || screen === "working") {
    show("working");
    poll(body.id, Date.now());
  }
}

function onWaiting(item) {
  if (!isCurrent(item) || current.waiting) return;
  current.waiting = true;
  if (screen === "working") {
    show("saved", { announce: words.speech.saved });
    say(words.speech.saved, { url: promptUrl("speech", "saved") });
    after(settings.resetSeconds, welcome);
  }
}

function onRejected(item, status, body) {
  if (!isCurrent(item)) return;
  const code = body && body.error;
  if (code === "silent" || code === "empty") problem("silent");
  else if (code === "too_long" || code === "too_large") problem("too_long");
  else problem("other");
}

function onUnauthorized(item) {
  if (isCurrent(item)) {
    $("setup-text").textContent = words.problems.token;
    show("setup", { announce: words.problems.token });
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token()}` },
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(body.message || response.status), { status: response.status });
  return body;
}

async function poll(requestId, started) {
  clearTimeout(pollTimer);
  if (!current || current.requestId !== requestId) return;
  const waited = Date.now() - started;
  let body = null;
  try {
    body = await api(`${settings.uploadUrl}/${requestId}`);
  } catch (error) {
    console.warn("status check failed; trying again", error);
  }
  if (!current || current.requestId !== requestId) return;
  if (body && body.state !== "transcribing") {
    readback(body);
    return;
  }
  if (waited > settings.readbackWaitSeconds * 1000) {
    // The message is safe in the queue; nobody should stand waiting for a slow worker.
    thank(requestId, "sent_without_readback");
    return;
  }
  pollTimer = setTimeout(() => poll(requestId, started), waited < 10000 ? 250 : 1000);
}

function readback(body) {
  const rb = body.readback;
  $("rb-emergency").textContent = rb.emergency || "";
  $("rb-emergency").hidden = !rb.emergency;
  $("rb-heard").textContent = rb.heard || "";
  $("rb-heard-block").hidden = !rb.heard;
  $("rb-note").textContent = rb.note || "";
  $("rb-note").hidden = !rb.note;
  $("rb-about").textContent = rb.about || "";
  $("rb-about-block").hidden = !rb.about;
  document.body.dataset.category = body.category || "";
  show("readback", { announce: rb.speech });
  performance.mark("kiosk-readback");
  say(`${rb.speech} ${words.speech.readback_suffix}`, {
    url: `${settings.uploadUrl}/${body.id}/speech/readback.wav`,
    auth: true,
  });
  after(settings.readbackSeconds, welcome);
}

function thank(requestId, key, phone) {
  $("done-number").textContent = String(requestId);
  $("done-phone").hidden = key !== "done_phone";
  $("done-phone-number").textContent = phone || "";
  $("done-no-phone").hidden = key !== "done_no_phone";
  const text = words.speech[key]
    .replace("{number}", String(requestId).split("").join(" "))
    .replace("{phone}", String(phone || "").split("").join(" "));
  show("done", { announce: text });
  say(text, { url: `${settings.uploadUrl}/${requestId}/speech/${key}.wav`, auth: true });
  after(settings.resetSeconds, welcome);
}

async function answer(reply, attempt = 0) {
  const requestId = current && current.requestId;
  if (!requestId) return welcome();
  if (attempt === 0) {
    if (reply === "yes") askPhone();
    else {
      welcome();
      $("talk-text").textContent = words.speech.again;
      say(words.speech.again, { url: promptUrl("speech", "again") });
    }
  }
  try {
    await api(`${settings.uploadUrl}/${requestId}/confirm`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ answer: reply }),
    });
  } catch (error) {
    // The message itself is already safe; keep trying to record the answer for a while.
    if ((error.status || 500) >= 500 && attempt < 8) {
      setTimeout(() => answer(reply, attempt + 1), Math.min(30000, 1000 * 2 ** attempt));
    }
  }
}

// --- the call-back number: a big keypad after "Yes, send it" ----------------------------

const MAX_DIGITS = 16; // E.164: + and at most 15 digits
let typed = "";

function showTyped() {
  const display = $("phone-display");
  // Grouped in threes and fours, as people read numbers out.
  display.textContent = typed ? typed.replace(/(\d{3})(?=\d{4})/g, "$1 ") : display.dataset.empty;
  display.classList.toggle("empty", !typed);
}

function askPhone() {
  typed = "";
  showTyped();
  $("phone-problem").hidden = true;
  show("phone", { announce: words.speech.phone_ask });
  say(words.speech.phone_ask, { url: promptUrl("speech", "phone_ask") });
  after(settings.readbackSeconds, welcome);
}

function press(key) {
  after(settings.readbackSeconds, welcome); // still there: keep the keypad open
  $("phone-problem").hidden = true;
  if (key === "+" && typed) return; // a + only starts a number
  if (typed.length < MAX_DIGITS) typed += key;
  showTyped();
}

function unpress() {
  after(settings.readbackSeconds, welcome);
  typed = typed.slice(0, -1);
  showTyped();
}

async function sendPhone(phone, attempt = 0) {
  const requestId = current && current.requestId;
  if (!requestId) return welcome();
  try {
    await api(`${settings.uploadUrl}/${requestId}/phone`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ phone }),
    });
  } catch (error) {
    if (error.status === 400 && attempt === 0) {
      // The number is not complete: say so on the keypad and let them fix it.
      const text = words.problems.phone;
      $("phone-problem").textContent = text;
      $("phone-problem").hidden = false;
      say(text, { url: promptUrl("problems", "phone") });
      return;
    }
    // The request itself is already safe; keep trying to store the number for a while.
    if ((error.status || 500) >= 500 && attempt < 8) {
      setTimeout(() => sendPhone(phone, attempt + 1), Math.min(30000, 1000 * 2 ** attempt));
    }
  }
  if (attempt === 0) {
    if (phone) thank(requestId, "done_phone", phone);
    else thank(requestId, "done_no_phone");
  }
}

// --- wiring ----------------------------------------------------------------------------

const courier = new Courier({
  url: settings.uploadUrl,
  token,
  retryMaxSeconds: settings.retryMaxSeconds,
  onSent,
  onWaiting,
  onRejected,
  onUnauthorized,
});

$("talk").addEventListener("click", () => {
  if (recording) finish();
  else startRecording();
});
$("yes").addEventListener("click", () => answer("yes"));
$("again").addEventListener("click", () => answer("again"));
for (const key of document.querySelectorAll(".keypad .key[data-key]")) {
  key.addEventListener("click", () => press(key.dataset.key));
}
$("phone-delete").addEventListener("click", unpress);
// A keyboard works too: digits type, Backspace deletes, Enter on no button sends.
document.addEventListener("keydown", (event) => {
  if (screen !== "phone" || event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[0-9+]$/.test(event.key)) press(event.key);
  else if (event.key === "Backspace") unpress();
  else return;
  event.preventDefault();
});
$("phone-send").addEventListener("click", () => {
  if (typed.replace("+", "").length) sendPhone(typed);
  else {
    $("phone-problem").textContent = words.problems.phone;
    $("phone-problem").hidden = false;
    say(words.problems.phone, { url: promptUrl("problems", "phone") });
  }
});
$("phone-none").addEventListener("click", () => sendPhone(null));
$("done-finish").addEventListener("click", welcome);
$("saved-finish").addEventListener("click", welcome);
$("problem-retry").addEventListener("click", welcome);

async function checkKiosk() {
  try {
    const kiosk = await api(settings.kioskUrl);
    const wanted = kiosk.language;
    const asked = new URLSearchParams(location.search).get("lang");
    if (wanted && !asked && wanted !== settings.language && settings.languages.includes(wanted)) {
      location.replace(`${location.pathname}?lang=${encodeURIComponent(wanted)}`);
    }
  } catch (error) {
    if (error.status === 401) {
      $("setup-text").textContent = words.problems.token;
      show("setup", { announce: words.problems.token });
    }
    // Otherwise the server is unreachable: recordings wait in the outbox meanwhile.
  }
}

function boot() {
  if (takeTokenFromAddress()) {
    welcome();
    checkKiosk();
    courier.kick(); // anything left from before a reload or a power cut
  } else {
    show("setup");
  }
  document.body.dataset.ready = "yes";
}

window.carecallKiosk = { store, courier, spoken };
boot();
