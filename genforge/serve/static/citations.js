// Citation markers read only from prose, as genforge.rag.cite.markers reads them (the same rules,
// checked on the same table of cases): `[1]`, `[1, 2]`, `[1][2]` attached to a word or sentence;
// code (fenced, inline, prompt lines) and bracketed number lists that read as code or data
// (`x = [1, 2]`, `returns [1, 2, 3]`, `x[1]`, `f([1])`) are not citations.

const GROUP = /\[(\d+(?:\s*,\s*\d+)*)\]/g;
const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const PROMPT_LINE = /^\s*(>>>|\.\.\.\s|\$\s|In \[\d+\]:)/;
const VALUE_WORDS = new Set(
  ("is are was were be returns return gives give yields yield prints print outputs output equals " +
    "becomes produces contains evaluates").split(" "),
);
const CODE_BEFORE = new Set("=([{:+/%<>|&^~\\@→");
const CITING_COLON = /\b(?:sources?|see|references?|refs?|citations?)\s*:$/i;

const blank = (s) => s.replace(/[^\n]/g, " ");

// The text with code blanked out (same length, newlines kept).
export function prose(text) {
  const out = [];
  let fence = null;
  let prompt = false;
  for (const line of text.match(/[^\n]*\n|[^\n]+$/g) || []) {
    const m = line.match(FENCE);
    if (fence === null && m) {
      fence = m[1];
      out.push(blank(line));
    } else if (fence !== null) {
      if (m && m[1][0] === fence[0] && m[1].length >= fence.length) fence = null;
      out.push(blank(line));
    } else if (PROMPT_LINE.test(line) || (prompt && line.trim())) {
      prompt = true;
      out.push(blank(line));
      continue;
    } else {
      out.push(line);
    }
    prompt = false;
  }
  return out.join("").replace(/(`+)(?!`).*?(?<!`)\1(?!`)/gs, (m) => blank(m));
}

function numbersOf(group, count) {
  const digits = group.split(/\s*,\s*/);
  const numbers = digits.map(Number);
  if (digits.some((d) => d.startsWith("0")) || new Set(numbers).size < numbers.length) return null;
  return numbers.every((n) => n >= 1 && n <= count) ? numbers : null;
}

function unclosed(before) {
  const stack = [];
  for (let i = 0; i < before.length; i++) {
    const ch = before[i];
    if ("([{".includes(ch)) {
      const call = ch === "(" && i > 0 && /[\p{L}\p{N}_)\]]/u.test(before[i - 1]);
      stack.push(ch !== "(" || call ? ch : ""); // "" a prose parenthesis
    } else if (")]}".includes(ch) && stack.length) {
      stack.pop();
    }
  }
  return stack.some(Boolean);
}

function fitsBefore(before) {
  if (unclosed(before)) return false;
  const stripped = before.trimEnd();
  if (!stripped) return true;
  const prev = stripped[stripped.length - 1];
  if (CITING_COLON.test(stripped)) return true;
  if (CODE_BEFORE.has(prev) || [" *", " -", "->", "=>"].some((e) => stripped.endsWith(e))) return false;
  if (stripped !== before) {
    const word = stripped.match(/(\w+)$/);
    return !(word && VALUE_WORDS.has(word[1].toLowerCase()));
  }
  if (".!?;,".includes(prev)) return true;
  const token = stripped.match(/[\w.]+$/);
  if (!token) return false;
  const t = token[0];
  return /^\p{L}+$/u.test(t) && t.length >= 3 && t !== t.toUpperCase();
}

function fitsAfter(after) {
  return !(/^\s*(==?|:\S|\*\*?\s|[-+/%]\s|\[)/.test(after) || /^(\(|\.[A-Za-z_])/.test(after));
}

function isProse(text, start, end) {
  const lineStart = text.lastIndexOf("\n", start - 1) + 1;
  const lineEnd = text.indexOf("\n", end);
  const before = text.slice(lineStart, start);
  const after = text.slice(end, lineEnd < 0 ? text.length : lineEnd);
  if (!fitsBefore(before) || !fitsAfter(after)) return false;
  if (after.startsWith(":") && /^\s*(for|if|elif|while|with|def|class|lambda)\b/.test(before)) return false;
  if (/[A-Za-z]$/.test(before)) return /^(\s*$|[.,;:!?)])/.test(after);
  return true;
}

// The markers in `text` whose numbers all name one of `count` sources: [{start, end, numbers}].
export function markers(text, count) {
  const clean = prose(text);
  const groups = [...clean.matchAll(GROUP)];
  const found = [];
  let i = 0;
  while (i < groups.length) {
    const chain = [groups[i]];
    while (i + 1 < groups.length && groups[i + 1].index === chain.at(-1).index + chain.at(-1)[0].length) {
      i += 1;
      chain.push(groups[i]);
    }
    i += 1;
    const numbers = chain.map((g) => numbersOf(g[1], count));
    const last = chain.at(-1);
    if (numbers.every(Boolean) && isProse(clean, chain[0].index, last.index + last[0].length)) {
      chain.forEach((g, j) => found.push({ start: g.index, end: g.index + g[0].length, numbers: numbers[j] }));
    }
  }
  return found;
}
