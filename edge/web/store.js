// Conversations and settings in localStorage: they never leave this browser. What is read back is
// checked for shape, since anything (another page version, a hand edit) may have written it.

const CHATS = "edge.chats.v1";
const CURRENT = "edge.current.v1";
const SETTINGS = "edge.settings.v1";
const DEFAULTS = { temperature: 0.7, maxTokens: 512, seed: "", apiKey: "" };

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (error) {  // quota exceeded or storage disabled: the page still works, unsaved
    console.warn("edge: could not save", key, error);
  }
}

function cleanMessage(message) {
  if (!message || !["user", "assistant"].includes(message.role)) return null;
  const stats = message.stats && typeof message.stats === "object" ? message.stats : null;
  return { role: message.role, content: String(message.content ?? ""), stats };
}

function cleanChat(chat) {
  if (!chat || typeof chat.id !== "string" || !Array.isArray(chat.messages)) return null;
  return {
    id: chat.id,
    title: String(chat.title || "New chat"),
    system: String(chat.system ?? ""),
    updated: Number(chat.updated) || 0,
    messages: chat.messages.map(cleanMessage).filter(Boolean),
  };
}

export function newChat(system = "") {
  const id = `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  return { id, title: "New chat", system, updated: Date.now(), messages: [] };
}

export function loadChats() {
  const chats = read(CHATS, []);
  return Array.isArray(chats) ? chats.map(cleanChat).filter(Boolean) : [];
}

export function saveChats(chats) {
  write(CHATS, chats);
}

export function loadCurrentId() {
  return read(CURRENT, null);
}

export function saveCurrentId(id) {
  write(CURRENT, id);
}

export function loadSettings() {
  const saved = read(SETTINGS, {});
  return { ...DEFAULTS, ...(saved && typeof saved === "object" ? saved : {}) };
}

export function saveSettings(settings) {
  write(SETTINGS, settings);
}

// A conversation's title: the start of its first question.
export function titleOf(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 40 ? `${line.slice(0, 39)}\u2026` : line || "New chat";
}
