// The chat page's controller: conversations (store.js), streaming (chat.js), rendering
// (markdown.js) and the status panel (status.js). Plain modules, no framework, no build step.

import { ApiError, getJSON, streamChat } from "./chat.js";
import { renderMarkdown } from "./markdown.js";
import { startStatus } from "./status.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), chats: $("chats"), messages: $("messages"), error: $("error"), form: $("composer"),
  prompt: $("prompt"), send: $("send"), stop: $("stop"), system: $("system"), temperature: $("temperature"),
  maxTokens: $("max-tokens"), seed: $("seed"), apiKey: $("api-key"), newChat: $("new-chat"),
};
const state = { chats: store.loadChats(), current: null, settings: store.loadSettings(), model: null, controller: null };

// ---- small helpers -------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {  // no clipboard API outside secure contexts (http to another host): the old way
    const area = document.body.appendChild(el("textarea"));
    area.value = text;
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1200);
}

function money(usd) {
  if (!usd) return "$0";
  return usd >= 0.01 ? `$${usd.toFixed(4)}` : `$${usd.toPrecision(2)}`;
}

function showError(message) {
  ui.error.textContent = message || "";
}

// ---- the model line -----------------------------------------------------------------------

async function loadModel() {
  try {
    const models = await getJSON("/v1/models", state.settings.apiKey);
    const model = models.data[0];
    state.model = model.id;
    ui.model.replaceChildren(el("strong", "", model.id), ` \u00b7 ${model.context_length} tokens of context`);
  } catch (error) {
    state.model = null;
    const text = error instanceof ApiError && error.status === 401
      ? "this server needs an API key: enter it under Settings" : `model unavailable: ${error.message}`;
    ui.model.textContent = text;
  }
}

// ---- conversations -------------------------------------------------------------------------

function currentChat() {
  return state.chats.find((chat) => chat.id === state.current);
}

function persist() {
  store.saveChats(state.chats);
  store.saveCurrentId(state.current);
}

function openChat(id) {
  state.current = id;
  persist();
  renderChats();
  renderMessages();
  ui.system.value = currentChat()?.system ?? "";
}

function startChat() {
  if (state.controller) return;
  const empty = state.chats.find((chat) => chat.messages.length === 0);
  const chat = empty ?? store.newChat(currentChat()?.system ?? "");
  if (!empty) state.chats.unshift(chat);
  openChat(chat.id);
  ui.prompt.focus();
}

function deleteChat(id) {
  state.chats = state.chats.filter((chat) => chat.id !== id);
  if (!state.chats.length) state.chats.push(store.newChat());
  openChat(state.current === id ? state.chats[0].id : state.current);
}

function renderChats() {
  ui.chats.replaceChildren(...state.chats.map((chat) => {
    const item = el("li");
    const open = item.appendChild(el("button", "open", chat.title));
    open.type = "button";
    open.setAttribute("aria-current", String(chat.id === state.current));
    open.addEventListener("click", () => { if (!state.controller) openChat(chat.id); });
    const remove = item.appendChild(el("button", "delete", "\u00d7"));
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete conversation: ${chat.title}`);
    remove.addEventListener("click", () => { if (!state.controller) deleteChat(chat.id); });
    return item;
  }));
}

// ---- messages ------------------------------------------------------------------------------

function statsLine(stats) {
  if (!stats) return [];
  const parts = [];
  if (stats.prompt_tokens !== undefined) {
    parts.push(`${stats.prompt_tokens} prompt + ${stats.completion_tokens} completion tokens`);
  } else if (stats.chunks) {
    parts.push(`\u2248${stats.chunks} tokens streamed`);
  }
  if (stats.tokens_per_second) parts.push(`${stats.tokens_per_second.toFixed(1)} tok/s`);
  if (stats.estimated_cost !== undefined) parts.push(`cost ${money(stats.estimated_cost)}`);
  if (stats.stopped) parts.push("stopped");
  else if (stats.finish_reason === "length") parts.push("cut at max tokens");
  return parts.map((text) => el("span", "", text));
}

function fillMessage(node, message) {
  const body = node.querySelector(".body");
  if (message.role === "user") body.textContent = message.content;
  else body.replaceChildren(renderMarkdown(message.content, copyText));
  const foot = node.querySelector(".foot");
  if (!foot) return;
  const copy = el("button", "", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy this reply");
  copy.addEventListener("click", () => copyText(message.content, copy));
  foot.replaceChildren(...statsLine(message.stats), copy);
}

function messageNode(message) {
  const node = el("article", `msg ${message.role}`);
  node.append(el("div", "who", message.role === "user" ? "You" : state.model ?? "Assistant"));
  node.append(el("div", message.role === "user" ? "body plain" : "body"));
  if (message.role === "assistant") node.append(el("div", "foot"));
  fillMessage(node, message);
  return node;
}

function renderMessages() {
  const chat = currentChat();
  if (!chat?.messages.length) {
    ui.messages.replaceChildren(el("p", "empty", "Ask anything. Replies stream from the model on this server."));
    return;
  }
  ui.messages.replaceChildren(...chat.messages.map(messageNode));
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---- sending -------------------------------------------------------------------------------

function requestBody(chat) {
  const messages = chat.messages.filter((m) => m.content).map((m) => ({ role: m.role, content: m.content }));
  if (chat.system.trim()) messages.unshift({ role: "system", content: chat.system });
  const body = { model: state.model, messages, temperature: Number(state.settings.temperature),
    max_tokens: Number(state.settings.maxTokens) };
  if (String(state.settings.seed).trim() !== "") body.seed = Number(state.settings.seed);
  return body;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.messages.setAttribute("aria-busy", String(busy));
}

// Streams one reply into `reply` (the message) and `node` (its DOM); redraws at most once a frame.
async function streamReply(chat, reply, node) {
  const started = performance.now();
  let first = null;
  let pending = false;
  const redraw = () => {
    pending = false;
    fillMessage(node, reply);
    ui.messages.scrollTop = ui.messages.scrollHeight;
  };
  await streamChat(requestBody(chat), {
    apiKey: state.settings.apiKey, signal: state.controller.signal,
    onChunk(chunk) {
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        first ??= performance.now();
        reply.content += choice.delta.content;
        reply.stats.chunks += 1;
      }
      if (choice?.finish_reason) reply.stats.finish_reason = choice.finish_reason;
      if (chunk.usage) Object.assign(reply.stats, chunk.usage);
      if (!pending) { pending = true; requestAnimationFrame(redraw); }
    },
  });
  const decoding = (performance.now() - (first ?? started)) / 1000;
  const tokens = reply.stats.completion_tokens ?? reply.stats.chunks;
  // Decode speed after the first token, as the server's own edge_decode_tokens_per_second.
  if (tokens > 1 && decoding > 0) reply.stats.tokens_per_second = (tokens - 1) / decoding;
  reply.stats.seconds_to_first_token = ((first ?? started) - started) / 1000;
}

async function send() {
  const text = ui.prompt.value;
  const chat = currentChat();
  if (!text.trim() || state.controller || !chat) return;
  if (!state.model) await loadModel();
  if (!state.model) { showError(ui.model.textContent); return; }
  showError("");
  chat.messages.push({ role: "user", content: text, stats: null });
  if (chat.messages.length === 1) chat.title = store.titleOf(text);
  const reply = { role: "assistant", content: "", stats: { chunks: 0 } };
  chat.messages.push(reply);
  chat.updated = Date.now();
  ui.prompt.value = "";
  persist();
  renderChats();
  renderMessages();
  const node = ui.messages.lastElementChild;
  node.classList.add("streaming");
  state.controller = new AbortController();
  setBusy(true);
  try {
    await streamReply(chat, reply, node);
  } catch (error) {
    if (error.name === "AbortError") reply.stats.stopped = true;
    else showError(error.message);
  } finally {
    state.controller = null;
    setBusy(false);
    node.classList.remove("streaming");
    if (!reply.content && !reply.stats.stopped) chat.messages.pop();  // nothing came back: keep the question only
    persist();
    renderMessages();
    ui.prompt.focus();
  }
}

function stop() {
  state.controller?.abort();
}

// ---- settings and wiring -------------------------------------------------------------------

function bindSettings() {
  const fields = [["temperature", ui.temperature], ["maxTokens", ui.maxTokens], ["seed", ui.seed], ["apiKey", ui.apiKey]];
  for (const [key, input] of fields) {
    input.value = state.settings[key];
    input.addEventListener("input", () => {
      state.settings[key] = input.value;
      store.saveSettings(state.settings);
    });
  }
  ui.apiKey.addEventListener("change", loadModel);
  ui.system.addEventListener("input", () => {
    const chat = currentChat();
    if (chat) { chat.system = ui.system.value; persist(); }
  });
}

function bindComposer() {
  ui.form.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", startChat);
  ui.prompt.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; an IME composition's Enter is neither.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!state.controller) send();
    }
    if (event.key === "Escape" && state.controller) stop();
  });
}

function main() {
  if (!state.chats.length) state.chats.push(store.newChat());
  const saved = store.loadCurrentId();
  state.current = state.chats.some((chat) => chat.id === saved) ? saved : state.chats[0].id;
  bindSettings();
  bindComposer();
  openChat(state.current);
  setBusy(false);
  loadModel().then(renderMessages);
  startStatus($("tiles"), $("status-state"));
  ui.prompt.focus();
}

main();
