// A small, safe markdown renderer for model answers: fenced code blocks, inline code, bold and
// italic, headings, lists, quotes, rules and links. The text is HTML-escaped first, then only the
// tags made here are added; a link's target must be http(s).

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function renderInline(text) {
  const slots = []; // finished HTML kept out of later replacements
  const slot = (html) => `\u0000${slots.push(html) - 1}\u0000`;
  const emphasis = (s) =>
    s
      .replace(/(\*\*|__)(?=\S)([^\n]*?\S)\1/g, "<strong>$2</strong>")
      .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![*\w])/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?![_\w])/g, "$1<em>$2</em>");
  const link = (url, label) =>
    slot(`<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`);
  let s = escapeHtml(text);
  s = s.replace(/`([^`\n]+)`/g, (_, code) => slot(`<code>${code}</code>`));
  s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)\u0000]+)\)/g, (_, label, url) =>
    link(url, emphasis(label)),
  );
  s = s.replace(/\bhttps?:\/\/(?:[^\s<>&"'\u0000]|&amp;)+[^\s<>&"'\u0000.,:;!?)\]]/g, (url) =>
    link(url, url),
  );
  s = emphasis(s);
  const restore = (html) => html.replace(/\u0000(\d+)\u0000/g, (_, i) => restore(slots[i]));
  return restore(s);
}

function codeBlock(code, lang) {
  const name = lang ? `<span class="lang">${escapeHtml(lang)}</span>` : "<span></span>";
  const cls = lang ? ` class="language-${escapeHtml(lang)}"` : "";
  return (
    `<div class="code-block"><div class="code-head">${name}` +
    `<button type="button" class="copy copy-code">Copy code</button></div>` +
    `<pre><code${cls}>${escapeHtml(code)}</code></pre></div>`
  );
}

export function renderMarkdown(source) {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let paragraph = [];
  let list = null; // {tag, start, items}
  let quote = [];
  const flushParagraph = () => {
    if (paragraph.length) out.push(`<p>${paragraph.map(renderInline).join("<br>")}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (!list) return;
    const start = list.tag === "ol" && list.start !== 1 ? ` start="${list.start}"` : "";
    const items = list.items.map((item) => `<li>${renderInline(item)}</li>`).join("");
    out.push(`<${list.tag}${start}>${items}</${list.tag}>`);
    list = null;
  };
  const flushQuote = () => {
    if (quote.length) out.push(`<blockquote>${renderMarkdown(quote.join("\n"))}</blockquote>`);
    quote = [];
  };
  const flush = () => {
    flushParagraph();
    flushList();
    flushQuote();
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/.exec(line);
    if (fence) {
      flush();
      const close = new RegExp(`^ {0,3}${fence[1][0]}{${fence[1].length},}\\s*$`);
      const body = [];
      for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
      out.push(codeBlock(body.join("\n"), fence[2])); // an unclosed fence runs to the end
      continue;
    }
    const quoted = /^ {0,3}> ?(.*)$/.exec(line);
    if (quoted) {
      flushParagraph();
      flushList();
      quote.push(quoted[1]);
      continue;
    }
    flushQuote();
    const heading = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      flush();
      const level = Math.min(heading[1].length + 2, 6); // h1/h2 belong to the page
      out.push(`<h${level}>${renderInline(heading[2])}</h${level}>`);
      continue;
    }
    if (/^ {0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      out.push("<hr>");
      continue;
    }
    const item = /^\s*([-*+]|(\d{1,9})[.)])\s+(.*)$/.exec(line);
    if (item) {
      flushParagraph();
      const tag = item[2] ? "ol" : "ul";
      if (list && list.tag !== tag) flushList();
      if (!list) list = { tag, start: item[2] ? Number(item[2]) : 1, items: [] };
      list.items.push(item[3]);
      continue;
    }
    if (!line.trim()) {
      flush();
      continue;
    }
    if (list && /^\s+\S/.test(line)) {
      list.items[list.items.length - 1] += `\n${line.trim()}`; // an item's continuation line
      continue;
    }
    flushList();
    paragraph.push(line);
  }
  flush();
  return out.join("");
}

// An answer as it would be read aloud: the rendered text without its markup, a blank line after
// each block (a heading or list item with no full stop still ends a sentence for the voice) and
// without the code blocks' labels and Copy buttons.
export function plainText(source) {
  const doc = new DOMParser().parseFromString(renderMarkdown(source), "text/html");
  for (const head of doc.querySelectorAll(".code-head")) head.remove();
  for (const br of doc.querySelectorAll("br")) br.replaceWith("\n");
  for (const block of doc.querySelectorAll("p, li, h3, h4, h5, h6, pre, blockquote")) {
    block.append("\n\n");
  }
  return doc.body.textContent.replace(/\n{3,}/g, "\n\n").trim();
}
