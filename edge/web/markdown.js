// A small, safe markdown renderer: model text becomes DOM nodes built with createElement and
// textContent, never parsed as HTML, so a reply can show "<script>" but never run it.
// Supported: fenced code blocks (also unclosed ones, while a reply streams), headings, bullet and
// numbered lists, block quotes, paragraphs, and inline `code`, **bold**, *italic* and http(s) links.

const FENCE = /^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
// Only * for emphasis: _ and __ inside identifiers (snake_case, __init__) are too common in replies.
const INLINE = /(`+)([\s\S]+?)\1|\*\*([^*\n]+)\*\*|\*([^*\s][^*\n]*)\*|\[([^\]\n]+)\]\(([^)\s]+)\)/g;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Inline spans of one line: text between matches stays text nodes.
function inline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    const [whole, , code, bold, italic, label, url] = match;
    if (code !== undefined) parent.append(el("code", "", code));
    else if (bold !== undefined) inline(parent.appendChild(el("strong")), bold);
    else if (italic !== undefined) inline(parent.appendChild(el("em")), italic);
    else if (/^https?:\/\//i.test(url)) parent.append(link(label, url));
    else parent.append(whole);  // javascript:, data: and other schemes stay plain text
    last = match.index + whole.length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function link(label, url) {
  const a = el("a", "", label);
  a.href = url;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}

// Lines joined inside one block keep their line breaks.
function inlineLines(parent, lines) {
  lines.forEach((line, i) => {
    if (i) parent.append(el("br"));
    inline(parent, line);
  });
  return parent;
}

export function codeBlock(code, language, onCopy) {
  const box = el("div", "codeblock");
  const head = box.appendChild(el("div", "head"));
  head.append(el("span", "", language || "code"));
  const copy = head.appendChild(el("button", "", "Copy"));
  copy.type = "button";
  copy.setAttribute("aria-label", language ? `Copy ${language} code` : "Copy code");
  copy.addEventListener("click", () => onCopy(code, copy));
  box.appendChild(el("pre")).appendChild(el("code", language ? `language-${language}` : "", code));
  return box;
}

function list(lines, start, pattern, tag) {
  const node = el(tag);
  let i = start;
  for (; i < lines.length; i++) {
    const match = lines[i].match(pattern);
    if (match) inline(node.appendChild(el("li")), match[1]);
    else if (lines[i].trim() && /^\s{2,}\S/.test(lines[i]) && node.lastChild) {
      node.lastChild.append(" ");  // an indented continuation line belongs to the item above
      inline(node.lastChild, lines[i].trim());
    } else break;
  }
  return [node, i];
}

// One block starting at lines[i]: returns [node, index of the next line].
function block(lines, i, onCopy) {
  const line = lines[i];
  const fence = line.match(FENCE);
  if (fence) {
    const body = [];
    let j = i + 1;
    while (j < lines.length && !(lines[j].trim().startsWith(fence[1]) && FENCE.test(lines[j]))) body.push(lines[j++]);
    return [codeBlock(body.join("\n"), fence[2], onCopy), j + 1];
  }
  const heading = line.match(HEADING);
  if (heading) {  // model headings sit below the page's own (h1, h2)
    const level = Math.min(6, heading[1].length + 2);
    return [inlineLines(el(`h${level}`), [heading[2]]), i + 1];
  }
  if (BULLET.test(line)) return list(lines, i, BULLET, "ul");
  if (NUMBERED.test(line)) return list(lines, i, NUMBERED, "ol");
  const paragraph = [];
  const quoted = QUOTE.test(line);
  let j = i;
  for (; j < lines.length && lines[j].trim(); j++) {
    if (j > i && (FENCE.test(lines[j]) || HEADING.test(lines[j]) || BULLET.test(lines[j]) ||
                  NUMBERED.test(lines[j]) || QUOTE.test(lines[j]) !== quoted)) break;
    paragraph.push(quoted ? lines[j].match(QUOTE)[1] : lines[j]);
  }
  const node = quoted ? el("blockquote") : el("p");
  return [inlineLines(node, paragraph), j];
}

// The whole reply as a DocumentFragment; `onCopy(text, button)` serves code blocks' copy buttons.
export function renderMarkdown(text, onCopy) {
  const fragment = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    if (!lines[i].trim()) { i++; continue; }
    const [node, next] = block(lines, i, onCopy);
    fragment.append(node);
    i = next;
  }
  return fragment;
}
