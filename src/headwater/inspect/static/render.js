// The accumulated response, drawn as a person reads it. The response is the server's Accumulator snapshot
// (wire JSON); this module only lays it out: message text, refusals, reasoning, tool calls, usage and cost.

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function kindLine(label, ...extra) {
  const line = el("div", "kind");
  line.append(el("b", null, label));
  for (const piece of extra) if (piece) line.append(el("span", null, piece));
  return line;
}

// Arguments as a person reads them: pretty JSON when they parse, else as they stand (still streaming, or broken).
function argsBlock(text) {
  if (text === undefined || text === null) return el("pre", "args raw", "(none)");
  try {
    return el("pre", "args", JSON.stringify(JSON.parse(text), null, 2));
  } catch {
    const pre = el("pre", "args raw", text);
    pre.title = "not (yet) valid JSON";
    return pre;
  }
}

function short(value, limit = 400) {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  return text.length > limit ? `${text.slice(0, limit)}… (${text.length} chars)` : text;
}

// Everything of an item not drawn otherwise, shortened.
function rest(item, skip) {
  const out = {};
  for (const [k, v] of Object.entries(item)) {
    if (!skip.includes(k) && v !== null && v !== undefined) out[k] = typeof v === "string" && v.length > 200 ? short(v, 200) : v;
  }
  if (!Object.keys(out).length) return null;
  const details = el("details");
  details.append(el("summary", null, "fields"), el("pre", "args", JSON.stringify(out, null, 2)));
  return details;
}

function message(item) {
  const box = el("div", "item message");
  box.append(kindLine(item.role || "message", item.phase ? `phase ${item.phase}` : "", item.status, item.id));
  const parts = item.content || [];
  if (!parts.length) box.append(el("div", "empty", "(no content yet)"));
  parts.forEach((part, k) => {
    let node;
    if (part.type === "output_text") node = el("div", "text part-output_text", part.text);
    else if (part.type === "refusal") node = el("div", "refusal part-refusal", part.refusal);
    else node = el("pre", "args", short(part));
    node.dataset.part = k;
    box.append(node);
    if (part.annotations && part.annotations.length) box.append(el("div", "kind", `${part.annotations.length} annotation(s)`));
  });
  return box;
}

function reasoning(item) {
  const box = el("div", "item reasoning");
  box.append(kindLine("reasoning", item.status, item.encrypted_content ? "encrypted content kept" : "", item.id));
  for (const part of item.summary || []) box.append(el("div", "summary-text", part.text));
  for (const part of item.content || []) box.append(el("div", "reasoning-text", part.text));
  if (!(item.summary || []).length && !(item.content || []).length) box.append(el("div", "empty", "(no summary or text)"));
  return box;
}

function functionCall(item) {
  const box = el("div", "item tool function_call");
  box.append(kindLine(`function_call ${item.name || ""}`, item.call_id, item.status, item.id));
  box.append(argsBlock(item.arguments));
  return box;
}

function customCall(item) {
  const box = el("div", "item tool custom_tool_call");
  box.append(kindLine(`custom_tool_call ${item.name || ""}`, item.call_id, item.status, item.id));
  box.append(el("pre", "args", item.input ?? ""));
  return box;
}

// Hosted tools (web search, file search, code interpreter, image generation, MCP, shell, apply_patch, ...).
function hosted(item) {
  const box = el("div", `item tool hosted ${item.type}`);
  box.append(kindLine(item.type || "item", item.name || item.server_label || "", item.status, item.id));
  if (item.type === "mcp_call" || item.type === "mcp_approval_request") box.append(argsBlock(item.arguments));
  if (typeof item.code === "string") box.append(el("pre", "args", item.code));
  if (item.action && item.action.query) box.append(el("div", null, `query: ${item.action.query}`));
  if (item.action && Array.isArray(item.action.commands)) box.append(el("pre", "args", item.action.commands.join("\n")));
  if (item.operation && typeof item.operation.diff === "string") box.append(el("pre", "args", item.operation.diff));
  if (typeof item.output === "string" && item.output) box.append(el("pre", "args", short(item.output)));
  const more = rest(item, ["type", "id", "status", "name", "server_label", "arguments", "code", "output"]);
  if (more) box.append(more);
  return box;
}

function usageLine(usage) {
  const line = el("div", "usage");
  if (!usage) {
    line.textContent = "usage: not reported (yet)";
    return line;
  }
  const bits = [
    ["input", usage.input_tokens], ["cached", usage.input_tokens_details?.cached_tokens],
    ["output", usage.output_tokens], ["reasoning", usage.output_tokens_details?.reasoning_tokens],
    ["total", usage.total_tokens],
  ];
  line.append("tokens: ");
  for (const [label, value] of bits) {
    if (value === undefined || value === null) continue;
    line.append(`${label} `, el("b", null, String(value)), "  ");
  }
  line.append(" · cost: ");
  line.append(typeof usage.cost === "number" ? el("b", "cost", `$${usage.cost.toFixed(6)}`) : "not reported");
  return line;
}

const ITEMS = { message, reasoning, function_call: functionCall, custom_tool_call: customCall };

export function renderResponse(target, response) {
  target.replaceChildren();
  const head = el("div", "head");
  const status = el("span", `status ${response.status || ""}`, response.status || "no status");
  head.append(status);
  if (response.id) head.append(el("span", null, response.id));
  if (response.model) head.append(el("span", null, `model ${response.model}`));
  if (response.incomplete_details?.reason) head.append(el("b", null, `incomplete: ${response.incomplete_details.reason}`));
  if (response.error) head.append(el("b", null, `error ${response.error.code ?? ""}: ${response.error.message ?? ""}`));
  target.append(head);
  const output = response.output || [];
  if (!output.length) target.append(el("p", "empty", "(no output items yet)"));
  for (const item of output) {
    const draw = ITEMS[item.type] || hosted;
    const node = draw(item);
    node.dataset.type = item.type;
    target.append(node);
  }
  target.append(usageLine(response.usage));
}
