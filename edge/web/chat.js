// The server's OpenAI API as the page uses it: fetch with an optional Bearer key, and a streamed
// chat completion read as server-sent events from the response body (EventSource cannot POST).

function headers(apiKey, json) {
  const result = json ? { "Content-Type": "application/json" } : {};
  if (apiKey) result.Authorization = `Bearer ${apiKey}`;
  return result;
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
  } catch { /* not JSON: keep the status line */ }
  return new ApiError(message, response.status);
}

export async function getJSON(path, apiKey) {
  const response = await fetch(path, { headers: headers(apiKey, false), cache: "no-store" });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// The `data:` payload of one SSE event block, or null for comments and other fields.
function eventData(block) {
  const data = block.split("\n").filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(line[5] === " " ? 6 : 5));
  return data.length ? data.join("\n") : null;
}

// POST /v1/chat/completions with stream: true. Calls onChunk(parsed chunk) per event and resolves
// at [DONE]; an aborted `signal` rejects with an AbortError (and closes the connection, which is
// what frees the request's slot on the server).
export async function streamChat(body, { apiKey, signal, onChunk }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(apiKey, true), signal,
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError("the stream ended before [DONE]", 0);
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const data = eventData(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (data === null) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message, 0);
      onChunk(chunk);
    }
  }
}
