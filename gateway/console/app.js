// The Chronicle console: plain JavaScript on the public API and WebSocket only (the API contract), so
// it is also an example of building on Chronicle. No build step; served by the gateway.

const session = {
  token: localStorage.getItem("chronicle.token"),
  userId: localStorage.getItem("chronicle.user_id"),
  username: localStorage.getItem("chronicle.username"),
};
const view = document.getElementById("view");
const statusLine = document.getElementById("status");

// ---- small helpers ----------------------------------------------------------------------

/** An element with attributes (on* are listeners) and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "muted";
}

function roles() {
  try {
    return JSON.parse(atob(session.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).roles || [];
  } catch {
    return [];
  }
}

/** A call to the API: the JSON answer, or an Error carrying the problem's detail. */
async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  const token = session.token;
  if (token) init.headers.authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  // The token this request carried is refused: it expired, or the key changed. (A 401 for
  // a request sent without one, or with a token since replaced, says nothing of the
  // session: a wrong password answered after the right one must not sign the user out.)
  if (response.status === 401 && token && session.token === token) signOut();
  const text = await response.text();
  const value = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(value?.detail || `${response.status} ${response.statusText}`);
    error.problem = value;
    throw error;
  }
  return value;
}

/** `read` once the read model has caught up with a command just made: a 403 or 404 is
 * asked again for a few seconds before it is believed. */
async function settled(read) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await read();
    } catch (error) {
      const status = error.problem?.status;
      if (attempt >= 20 || (status !== 403 && status !== 404)) throw error;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

/** Asks `read` again, every 250 ms for up to 5 s, until `done` holds for its answer (a read
 * model catching up with a command just made); the last answer either way. */
async function until(read, done) {
  for (let attempt = 0; ; attempt++) {
    const answer = await read();
    if (done(answer) || attempt >= 20) return answer;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** Runs `action`, reporting its failure in the status line. */
async function attempt(action) {
  try {
    await action();
  } catch (error) {
    say(error.message, true);
  }
}

function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function bytes(size) {
  if (size < 1024) return `${size} bytes`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

function money(cents) {
  return (cents / 100).toFixed(2);
}

// ---- the WebSocket: one per page, resubscribed with since_seq after every drop ----------

const live = {
  socket: null,
  rooms: new Map(), // room id -> last seq seen
  listeners: new Set(),
  backoff: 250,
  connect() {
    if (!session.token || this.socket) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(session.token)}`);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.backoff = 250;
      this.show("open", "● live");
      for (const [room, seq] of this.rooms) this.send({ type: "subscribe", room_id: room, since_seq: seq });
    });
    socket.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "message") {
        const last = this.rooms.get(frame.room_id) ?? 0;
        if (frame.seq > last + 1 && last > 0) {
          // A gap: ask again from the last seq seen.
          this.send({ type: "subscribe", room_id: frame.room_id, since_seq: last });
          return;
        }
        if (frame.seq <= last) return;
        this.rooms.set(frame.room_id, frame.seq);
      }
      for (const listener of this.listeners) listener(frame);
    });
    socket.addEventListener("close", () => {
      this.socket = null;
      if (!session.token) return this.show("closed", "");
      this.show("closed", "○ reconnecting…");
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    });
  },
  /** The connection's state, on the page (`body[data-live]`) and in the header. */
  show(state, text) {
    document.body.dataset.live = state;
    const badge = document.getElementById("live");
    badge.dataset.state = state;
    badge.textContent = text;
  },
  send(frame) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  },
  follow(room, seq) {
    this.rooms.set(room, seq);
    this.send({ type: "subscribe", room_id: room, since_seq: seq });
  },
  listen(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  },
  close() {
    const socket = this.socket;
    this.socket = null;
    socket?.close();
  },
};

// ---- sign in ------------------------------------------------------------------------------

function signIn(answer, username) {
  session.token = answer.token;
  session.userId = answer.user_id;
  session.username = username;
  localStorage.setItem("chronicle.token", answer.token);
  localStorage.setItem("chronicle.user_id", answer.user_id);
  localStorage.setItem("chronicle.username", username);
  say("");
  live.connect();
  alertBadge.refresh();
  render();
}

function signOut() {
  session.token = session.userId = session.username = null;
  localStorage.removeItem("chronicle.token");
  localStorage.removeItem("chronicle.user_id");
  localStorage.removeItem("chronicle.username");
  live.close();
  alertBadge.refresh();
  render();
}

function authView() {
  const login = el("form", {
    "aria-label": "Sign in",
    onsubmit: (event) => {
      event.preventDefault();
      const { username, password } = formData(event.target);
      attempt(async () => signIn(await api("POST", "/api/v1/auth/login", { username, password }), username));
    },
  },
    el("label", {}, "Username", el("input", { name: "username", required: true, autocomplete: "username" })),
    el("label", {}, "Password", el("input", { name: "password", type: "password", required: true, autocomplete: "current-password" })),
    el("button", { type: "submit" }, "Sign in"));
  const register = el("form", {
    "aria-label": "Sign up",
    onsubmit: (event) => {
      event.preventDefault();
      const form = formData(event.target);
      attempt(async () => {
        await api("POST", "/api/v1/auth/register", form);
        signIn(await api("POST", "/api/v1/auth/login", { username: form.username, password: form.password }), form.username);
      });
    },
  },
    el("label", {}, "Username", el("input", { name: "username", required: true, pattern: "[a-z0-9_]{3,32}" })),
    el("label", {}, "Display name", el("input", { name: "display_name", required: true })),
    el("label", {}, "Password", el("input", { name: "password", type: "password", required: true, minlength: 8, autocomplete: "new-password" })),
    el("button", { type: "submit" }, "Sign up"));
  return [el("section", {}, el("h2", {}, "Sign in"), login), el("section", {}, el("h2", {}, "Sign up"), register)];
}

// ---- shop -----------------------------------------------------------------------------

/** After a command on an item (`answer` is its `{"id","version"}`), waits until the
 * catalog shows it: the lists and carts read next are priced as it left them. */
async function itemSettled(url, answer) {
  if (!url.startsWith("/api/v1/inventory/items") || answer?.version === undefined) return;
  await api("GET", `/api/v1/inventory/items/${encodeURIComponent(answer.id)}?min_version=${answer.version}`);
}

async function shopView() {
  const staff = roles().includes("staff");
  const query = new URLSearchParams(location.hash.split("?")[1] || "").get("q") || "";
  // Staff see discontinued items too, to know what they withdrew.
  const catalog = `/api/v1/inventory/items?limit=200${staff ? "&discontinued=true" : ""}${query ? `&q=${encodeURIComponent(query)}` : ""}`;
  const [items, orders, firstCart] = await Promise.all([
    api("GET", catalog), api("GET", "/api/v1/orders?limit=50"), api("GET", "/api/v1/cart"),
  ]);
  const orderRows = el("tbody");
  // The newest order_status frame of each order: one may arrive before its row is drawn.
  const heard = new Map();
  const showOrder = (order) => {
    const pill = el("span", { class: "status-pill", "data-order-status": order.id }, heard.get(order.id) ?? order.status);
    const actions = el("td", {},
      el("button", { class: "secondary", onclick: () => attempt(async () => {
        await api("POST", `/api/v1/orders/${order.id}/pay`, { amount_cents: order.total_cents });
        render();
      }) }, "Pay"), " ",
      el("button", { class: "secondary", onclick: () => attempt(async () => {
        await api("POST", `/api/v1/orders/${order.id}/cancel`);
        render();
      }) }, "Cancel"));
    orderRows.prepend(el("tr", { "data-order": order.id },
      el("td", {}, order.id.slice(-8)), el("td", {}, pill), el("td", {}, money(order.total_cents ?? 0)), actions));
  };
  for (const order of orders.items.slice().reverse()) showOrder(order);
  const stop = live.listen((frame) => {
    if (frame.type !== "order_status") return;
    heard.set(frame.order_id, frame.status);
    const pill = document.querySelector(`[data-order-status="${CSS.escape(frame.order_id)}"]`);
    if (pill) pill.textContent = frame.status;
  });
  cleanups.push(stop);

  // The cart, drawn from the server's answer after every change: its prices are the
  // catalog's now, so a price change shows in the lines and the total. Every change names
  // the version the page shows (If-Match): one made in another tab meanwhile is not
  // overwritten, the cart is shown again instead.
  const cart = { version: firstCart.version, lines: new Map() };
  const cartRows = el("tbody");
  const cartLines = el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Item"), el("th", {}, "Quantity"), el("th", { class: "narrow-hide" }, "Price"), el("th", {}, "Line total"), el("th", {}, ""))),
    cartRows));
  const cartTotal = el("output", { "data-cart-total": "", "aria-label": "Cart total" });
  const emptyNote = el("p", { class: "muted" }, "Your cart is empty.");
  const coupon = el("input", { name: "coupon_code", autocomplete: "off" });
  const checkoutButton = el("button", { type: "submit" }, "Check out");
  const lineName = (line) => line.name ?? line.sku;
  const cartRow = (line) => {
    const quantity = el("input", {
      type: "number", class: "qty", min: 1, max: 1000000, value: line.quantity,
      "aria-label": `Quantity of ${lineName(line)} in the cart`,
      onchange: () => attempt(() => changeCart("PUT", `/api/v1/cart/items/${encodeURIComponent(line.sku)}`, { quantity: Number(quantity.value) })),
    });
    return el("tr", { "data-cart-line": line.sku },
      el("td", {}, lineName(line), line.discontinued ? el("span", { class: "muted" }, " (discontinued)") : null),
      el("td", {}, quantity),
      el("td", { class: "narrow-hide" }, line.unit_price_cents == null ? "…" : money(line.unit_price_cents)),
      el("td", { "data-line-total": line.sku }, line.line_total_cents == null ? "…" : money(line.line_total_cents)),
      el("td", {}, el("button", {
        class: "secondary", "aria-label": `Remove ${lineName(line)} from the cart`,
        onclick: () => attempt(() => changeCart("DELETE", `/api/v1/cart/items/${encodeURIComponent(line.sku)}`)),
      }, "Remove")));
  };
  const drawCart = (answer) => {
    cart.version = answer.version;
    cart.lines = new Map(answer.lines.map((line) => [line.sku, line.quantity]));
    cartRows.replaceChildren(...answer.lines.map(cartRow));
    cartTotal.textContent = money(answer.total_cents);
    cartTotal.dataset.cartTotal = answer.total_cents;
    emptyNote.hidden = answer.lines.length > 0;
    cartLines.hidden = answer.lines.length === 0;
    checkoutButton.disabled = answer.lines.length === 0;
  };
  const refreshCart = async (version = cart.version) => drawCart(await api("GET", `/api/v1/cart?min_version=${version}`));
  /** A change of the cart at the version shown; a 412 shows the cart as it is now. */
  const changeCart = async (method, path, body) => {
    try {
      const { version } = await api(method, path, body, { "if-match": `"${cart.version}"` });
      await refreshCart(version);
    } catch (error) {
      if (error.problem?.status === 412) {
        await refreshCart(0);
        throw new Error("Your cart was changed elsewhere: here it is as it is now");
      }
      throw error;
    }
  };
  const checkout = () => attempt(async () => {
    const body = coupon.value.trim() ? { coupon_code: coupon.value.trim() } : {};
    checkoutButton.disabled = true;
    try {
      // If-Match: the order is made of exactly the lines on the screen, once.
      const placed = await api("POST", "/api/v1/cart/checkout", body, { "if-match": `"${cart.version}"` });
      coupon.value = "";
      await refreshCart(cart.version + 1);
      // The total (after any coupon) is the order's own, as the server priced it.
      const priced = await settled(() => api("GET", `/api/v1/orders/${placed.id}?min_version=${placed.version}`));
      showOrder({ id: placed.id, status: priced.status, total_cents: priced.total_cents });
      say(`Order ${placed.id} placed`);
    } catch (error) {
      await refreshCart(0).catch(() => {});
      if (error.problem?.status === 412) throw new Error("Your cart was changed elsewhere: check it and check out again");
      throw error;
    }
  });
  drawCart(firstCart);

  const itemRow = (item) => {
    const quantity = el("input", { type: "number", class: "qty", min: 1, value: 1, "aria-label": `Quantity of ${item.name}` });
    const add = () => attempt(async () => {
      const held = cart.lines.get(item.sku) ?? 0;
      await changeCart("PUT", `/api/v1/cart/items/${encodeURIComponent(item.sku)}`, { quantity: held + Number(quantity.value) });
      say(`${item.name} is in your cart`);
    });
    const discontinue = () => attempt(async () => {
      const url = `/api/v1/inventory/items/${encodeURIComponent(item.sku)}/discontinue`;
      await itemSettled(url, await api("POST", url));
      say(`${item.name} is discontinued`);
      await refreshItems();
      await refreshCart();
    });
    return el("tr", { "data-item": item.sku },
      el("td", { class: "narrow-hide" }, item.sku),
      el("td", {}, item.name, item.description ? el("div", { class: "muted" }, item.description) : null),
      el("td", {}, money(item.price_cents)),
      el("td", { "data-available": item.sku }, item.available),
      el("td", {}, item.discontinued
        ? el("span", { class: "muted", "data-discontinued": item.sku }, "Discontinued")
        : el("div", { class: "actions" }, quantity, el("button", { onclick: add, "aria-label": `Add to cart: ${item.name}` }, "Add to cart"),
          staff ? el("button", { class: "secondary", onclick: discontinue, "aria-label": `Discontinue ${item.name}` }, "Discontinue") : null)));
  };
  const itemRows = el("tbody", {}, items.items.map(itemRow));
  // Redrawn in place after a staff change, so no form being filled is replaced.
  const refreshItems = async () => {
    const fresh = await api("GET", catalog);
    itemRows.replaceChildren(...fresh.items.map(itemRow));
  };
  const search = el("form", { role: "search", onsubmit: (event) => {
    event.preventDefault();
    const q = formData(event.target).q.trim();
    location.hash = q ? `#/shop?q=${encodeURIComponent(q)}` : "#/shop";
  } }, el("label", {}, "Search items", el("input", { name: "q", type: "search", value: query })), el("button", { type: "submit" }, "Search"));
  const sections = [
    el("section", {}, el("h2", {}, "Items"), search,
      el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", { class: "narrow-hide" }, "SKU"), el("th", {}, "Name"), el("th", {}, "Price"), el("th", {}, "Available"), el("th", {}, ""))),
        itemRows)),
      items.items.length ? null : el("p", { class: "muted" }, query ? `Nothing matches “${query}”.` : "No items yet.")),
    el("section", { "aria-label": "Your cart" }, el("h2", {}, "Your cart"), emptyNote,
      cartLines,
      el("p", {}, "Total: ", cartTotal),
      el("form", { "aria-label": "Check out", onsubmit: (event) => { event.preventDefault(); checkout(); } },
        el("label", {}, "Coupon code (optional)", coupon), checkoutButton)),
    el("section", {}, el("h2", {}, "Your orders"),
      el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Order"), el("th", {}, "Status"), el("th", {}, "Total"), el("th", {}, ""))), orderRows))),
  ];
  if (staff) sections.push(staffShop(async () => {
    await refreshItems();
    // A price change shows in the cart at once.
    await refreshCart();
  }));
  return sections;
}

function staffShop(refreshItems) {
  const submit = (what, method, shape) => (event) => {
    event.preventDefault();
    const form = event.target;
    attempt(async () => {
      const [url, body] = shape(formData(form));
      await itemSettled(url, await api(method, url, body));
      form.reset();
      say(`Saved: ${what}`);
      await refreshItems();
    });
  };
  // Only the fields filled in change.
  const edits = (f) => {
    const body = {};
    if (f.name.trim()) body.name = f.name.trim();
    if (f.price_cents !== "") body.price_cents = Number(f.price_cents);
    if (f.description.trim()) body.description = f.description.trim();
    return [`/api/v1/inventory/items/${encodeURIComponent(f.sku)}`, body];
  };
  return el("section", {}, el("h2", {}, "Staff: items, stock, coupons"),
    el("form", { "aria-label": "Create an item", onsubmit: submit("the item", "POST", (f) => ["/api/v1/inventory/items",
      { sku: f.sku, name: f.name, price_cents: Number(f.price_cents), initial_stock: Number(f.initial_stock) }]) },
      el("label", {}, "SKU", el("input", { name: "sku", required: true })),
      el("label", {}, "Name", el("input", { name: "name", required: true })),
      el("label", {}, "Price (cents)", el("input", { name: "price_cents", type: "number", min: 0, required: true })),
      el("label", {}, "Initial stock", el("input", { name: "initial_stock", type: "number", min: 0, required: true })),
      el("button", { type: "submit" }, "Create item")),
    el("form", { "aria-label": "Edit an item", onsubmit: submit("the item's changes", "PATCH", edits) },
      el("label", {}, "SKU", el("input", { name: "sku", required: true })),
      el("label", {}, "New name", el("input", { name: "name" })),
      el("label", {}, "New price (cents)", el("input", { name: "price_cents", type: "number", min: 0 })),
      el("label", { class: "wide" }, "New description", el("textarea", { name: "description", maxlength: 2000 })),
      el("button", { type: "submit" }, "Save changes")),
    el("form", { "aria-label": "Receive stock", onsubmit: submit("the stock received", "POST", (f) => [`/api/v1/inventory/items/${encodeURIComponent(f.sku)}/receive`,
      { quantity: Number(f.quantity) }]) },
      el("label", {}, "SKU", el("input", { name: "sku", required: true })),
      el("label", {}, "Quantity", el("input", { name: "quantity", type: "number", min: 1, required: true })),
      el("button", { type: "submit" }, "Receive stock")),
    el("form", { "aria-label": "Create a coupon", onsubmit: submit("the coupon", "POST", (f) => ["/api/v1/coupons",
      { code: f.code, percent_off: Number(f.percent_off), max_redemptions: Number(f.max_redemptions) }]) },
      el("label", {}, "Code", el("input", { name: "code", required: true })),
      el("label", {}, "Percent off", el("input", { name: "percent_off", type: "number", min: 1, max: 100, required: true })),
      el("label", {}, "Redemptions", el("input", { name: "max_redemptions", type: "number", min: 1, required: true })),
      el("button", { type: "submit" }, "Create coupon")));
}

// ---- blog -----------------------------------------------------------------------------

async function blogView(id) {
  if (id) return postView(id);
  const query = new URLSearchParams(location.hash.split("?")[1] || "").get("q") || "";
  const posts = await api("GET", `/api/v1/posts?limit=50${query ? `&q=${encodeURIComponent(query)}` : ""}`);
  const search = el("form", { role: "search", onsubmit: (event) => {
    event.preventDefault();
    location.hash = `#/blog?q=${encodeURIComponent(formData(event.target).q)}`;
  } }, el("label", {}, "Search posts", el("input", { name: "q", type: "search", value: query })), el("button", { type: "submit" }, "Search"));
  // As you type: the server renders and sanitizes exactly as it will for the saved post
  // (POST /api/v1/posts/preview). Only the newest answer is shown.
  const preview = el("div", { class: "post-body", "aria-live": "polite", "data-preview": "" });
  const saved = el("div", { "aria-live": "polite" });
  let previews = 0;
  let previewTimer;
  const livePreview = (markdown) => {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(async () => {
      const asked = ++previews;
      try {
        const answer = markdown ? await api("POST", "/api/v1/posts/preview", { body_markdown: markdown }) : { body_html: "" };
        if (asked === previews) preview.replaceChildren(htmlOf(answer.body_html));
      } catch (error) {
        if (asked === previews) preview.replaceChildren(el("p", { class: "error" }, error.message));
      }
    }, 250);
  };
  const write = el("form", { "aria-label": "Write a post", onsubmit: (event) => {
    event.preventDefault();
    const form = formData(event.target);
    attempt(async () => {
      const tags = form.tags.split(",").map((t) => t.trim()).filter(Boolean);
      const draft = await api("POST", "/api/v1/posts", { title: form.title, body_markdown: form.body_markdown, tags });
      saved.replaceChildren(el("p", {}, `Draft “${form.title}” saved. `),
        el("button", { onclick: () => attempt(async () => {
          await api("POST", `/api/v1/posts/${draft.id}/publish`);
          location.hash = `#/blog/${draft.id}`;
        }) }, "Publish"));
    });
  } },
    el("label", {}, "Title", el("input", { name: "title", required: true })),
    el("label", { class: "wide" }, "Markdown", el("textarea", { name: "body_markdown", required: true,
      oninput: (event) => livePreview(event.target.value) })),
    el("label", {}, "Tags (comma separated)", el("input", { name: "tags" })),
    el("button", { type: "submit" }, "Save draft"));
  return [
    el("section", {}, el("h2", {}, "Posts"), search,
      el("ul", { class: "plain", "aria-label": "Posts" }, posts.items.map((p) =>
        el("li", {}, el("a", { href: `#/blog/${p.id}` }, p.title), el("span", { class: "muted" }, ` ${(p.tags || []).join(", ")}`))))),
    el("section", {}, el("h2", {}, "Write"), write, saved, el("h3", {}, "Preview"), preview),
  ];
}

/** The server's sanitized HTML of a post, in an element of its own. */
function htmlOf(html) {
  const body = el("div", { class: "post-body" });
  body.innerHTML = html; // sanitized by the server (the API contract Blog); the page's CSP runs no inline script
  return body;
}

async function postView(id) {
  const post = await settled(() => api("GET", `/api/v1/posts/${id}`));
  const comments = await api("GET", `/api/v1/posts/${id}/comments?limit=200`).catch(() => ({ items: [] }));
  const list = el("ul", { class: "plain", "aria-label": "Comments" }, comments.items.map((c) => el("li", {}, c.body)));
  return el("section", {}, el("h2", {}, post.title), el("p", { class: "muted" }, post.status, " · ", (post.tags || []).join(", ")),
    htmlOf(post.body_html), el("h3", {}, "Comments"), list,
    el("form", { "aria-label": "Comment", onsubmit: (event) => {
      event.preventDefault();
      const { body } = formData(event.target);
      attempt(async () => {
        await api("POST", `/api/v1/posts/${id}/comments`, { body });
        list.append(el("li", {}, body));
        event.target.reset();
      });
    } }, el("label", {}, "Your comment", el("input", { name: "body", required: true })), el("button", { type: "submit" }, "Comment")));
}

// ---- chat -----------------------------------------------------------------------------

/** Display names by user id, asked once per page (`GET /api/v1/users/{id}`). */
const names = new Map();
function nameOf(userId) {
  if (userId === session.userId) return Promise.resolve("you");
  if (!names.has(userId)) {
    names.set(userId, api("GET", `/api/v1/users/${encodeURIComponent(userId)}`)
      .then((user) => user.display_name || user.username)
      .catch(() => userId.slice(-6)));
  }
  return names.get(userId);
}

/** The id of the user called `username` (`GET /api/v1/users?username=`). */
async function userIdOf(username) {
  const found = await api("GET", `/api/v1/users?username=${encodeURIComponent(username)}`);
  if (!found.items.length) throw new Error(`No user is called ${username}`);
  return found.items[0].user_id;
}

/** A span that shows `userId`'s display name once it is known. */
function person(userId) {
  const span = el("span", { "data-user": userId }, userId === session.userId ? "you" : userId.slice(-6));
  nameOf(userId).then((name) => (span.textContent = name));
  return span;
}

/** The thumbnail boxes the console asks for (sizes the server keeps): the whole picture
 * 128 px wide, and a 128 px square cropped around the centre for picture grids. */
const THUMB = "width=128";
const SQUARE = "width=128&height=128&fit=cover";

/** The token-guarded bytes of file `id` as an object URL; with `thumbnail` (a box's query),
 * its thumbnail in that box. */
async function fileUrl(id, thumbnail = null) {
  const path = thumbnail ? `/api/v1/files/${id}/thumbnail?${thumbnail}` : `/api/v1/files/${id}/content`;
  const answer = await fetch(path, { headers: { authorization: `Bearer ${session.token}` } });
  if (!answer.ok) throw new Error(`the file answered ${answer.status}`);
  return URL.createObjectURL(await answer.blob());
}

/** Saves file `id` as `name` through the browser's download. */
async function download(id, name) {
  const link = el("a", { href: await fileUrl(id), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

/** An attachment of a message: its name (a download) and, for an image, its thumbnail.
 * A member may read it once the room's history lists it, so a 404 is asked again. */
function attachment(fileId) {
  const item = el("span", { class: "attachment", "data-attachment": fileId }, "attachment…");
  settled(() => api("GET", `/api/v1/files/${fileId}`)).then(async (file) => {
    const link = el("button", { class: "link", type: "button", onclick: () => attempt(() => download(file.id, file.name)) },
      `${file.name} (${bytes(file.size)})`);
    item.replaceChildren(link);
    if (file.content_type?.startsWith("image/")) {
      const img = el("img", { alt: `Thumbnail of ${file.name}`, "data-thumb": file.id, height: 96 });
      item.append(" ", img);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
      img.src = await fileUrl(file.id, THUMB);
    }
  }).catch(() => item.replaceChildren("(attachment not available)"));
  return item;
}

async function chatView(roomId) {
  // A room just made may not be listed yet: its members come from the list.
  const rooms = await settled(async () => {
    const listed = await api("GET", "/api/v1/rooms");
    if (roomId && !listed.items.some((r) => r.id === roomId)) {
      const error = new Error("the room is not listed yet");
      error.problem = { status: 404 };
      throw error;
    }
    return listed;
  });
  const create = el("form", { "aria-label": "Create a room", onsubmit: (event) => {
    event.preventDefault();
    const form = formData(event.target);
    attempt(async () => {
      const members = await Promise.all(form.members.split(",").map((m) => m.trim()).filter(Boolean).map(userIdOf));
      const room = await api("POST", "/api/v1/rooms", { kind: "group", name: form.name, members });
      location.hash = `#/chat/${room.id}`;
    });
  } },
    el("label", {}, "Room name", el("input", { name: "name", required: true })),
    el("label", {}, "Members (usernames, comma separated)", el("input", { name: "members", autocomplete: "off" })),
    el("button", { type: "submit" }, "Create room"));
  const list = el("ul", { class: "plain", "aria-label": "Rooms" }, rooms.items.map((r) =>
    el("li", {}, el("a", { href: `#/chat/${r.id}`, "data-room": r.id }, r.name || r.id),
      r.unread_count ? el("span", { class: "muted" }, ` (${r.unread_count} unread)`) : null)));
  const sections = [el("section", {}, el("h2", {}, "Rooms"), list, create)];
  if (roomId) sections.push(await roomView(roomId, rooms.items.find((r) => r.id === roomId)?.members || []));
  return sections;
}

async function roomView(roomId, members) {
  const messages = el("ul", { class: "plain messages", "aria-label": "Messages", tabindex: 0 });
  const typing = el("p", { class: "muted", "aria-live": "polite" });
  // Who is online, and how far each member has read.
  const online = new Map();
  const readUpTo = new Map();
  const people = el("p", { class: "muted", "data-presence": "" });
  const drawPeople = () => people.replaceChildren(...members.filter((m) => m !== session.userId).map((m) =>
    el("span", { "data-member": m, "data-online": online.get(m) ? "yes" : "no" }, person(m),
      ` ${online.get(m) ? "● online" : "○ away"}${readUpTo.has(m) ? `, read to #${readUpTo.get(m)}` : ""}  `)));
  // Asked now, once subscribed, and every 5 s: presence frames go to the rooms the members
  // read model lists, and a room just made may not be there yet.
  const askPresence = () => Promise.all(members.filter((m) => m !== session.userId).map(async (m) => {
    const presence = await api("GET", `/api/v1/users/${m}/presence`).catch(() => null);
    online.set(m, Boolean(presence?.online));
  })).then(drawPeople);
  await askPresence();
  const polling = setInterval(askPresence, 5000);
  cleanups.push(() => clearInterval(polling));
  const shown = new Set();
  let oldest = Infinity;
  const show = (m, older = false) => {
    if (shown.has(m.seq)) return;
    shown.add(m.seq);
    oldest = Math.min(oldest, m.seq);
    const item = el("li", { "data-seq": m.seq }, el("span", { class: "muted" }, person(m.sender_id), ": "), m.body,
      (m.file_ids || []).flatMap((id) => [" ", attachment(id)]));
    const after = [...messages.children].find((li) => Number(li.dataset.seq) > m.seq);
    if (after) messages.insertBefore(item, after);
    else messages.append(item);
    if (!older) messages.scrollTop = messages.scrollHeight;
  };
  const page = await settled(() => api("GET", `/api/v1/rooms/${roomId}/messages?limit=50`));
  const history = page.items.slice().sort((a, b) => a.seq - b.seq);
  history.forEach((m) => show(m));
  const head = history.length ? history[history.length - 1].seq : 0;
  // Infinite scroll: older pages as the list is scrolled to its top.
  messages.addEventListener("scroll", () => {
    if (messages.scrollTop > 0 || oldest <= 1 || messages.dataset.loading) return;
    messages.dataset.loading = "1";
    attempt(async () => {
      const older = await api("GET", `/api/v1/rooms/${roomId}/messages?before_seq=${oldest}&limit=50`);
      // The message that was at the top stays where the reader saw it.
      const height = messages.scrollHeight;
      older.items.forEach((m) => show(m, true));
      messages.scrollTop += messages.scrollHeight - height;
    }).finally(() => delete messages.dataset.loading);
  });
  // A room opens at its newest message (once drawn), and stays there as pictures load.
  requestAnimationFrame(() => (messages.scrollTop = messages.scrollHeight));
  messages.addEventListener("load", (event) => {
    if (event.target.closest("li") === messages.lastElementChild) messages.scrollTop = messages.scrollHeight;
  }, true);
  let typingTimer;
  let typingUser = null;
  cleanups.push(live.listen((frame) => {
    if (frame.room_id !== roomId) return;
    if (frame.type === "message") {
      show(frame);
      // Their message is what they were typing.
      if (frame.sender_id === typingUser) {
        clearTimeout(typingTimer);
        typing.textContent = "";
      }
      if (frame.sender_id !== session.userId) api("POST", `/api/v1/rooms/${roomId}/read`, { up_to_seq: frame.seq }).catch(() => {});
    }
    if (frame.type === "subscribed") askPresence();
    if (frame.type === "presence") {
      online.set(frame.user_id, frame.online);
      drawPeople();
    }
    if (frame.type === "read_receipt" && frame.user_id !== session.userId) {
      readUpTo.set(frame.user_id, frame.up_to_seq);
      drawPeople();
    }
    if (frame.type === "typing" && frame.user_id !== session.userId) {
      typingUser = frame.user_id;
      nameOf(frame.user_id).then((name) => (typing.textContent = `${name} is typing…`));
      clearTimeout(typingTimer);
      typingTimer = setTimeout(() => (typing.textContent = ""), 3000);
    }
  }));
  live.follow(roomId, head);
  if (head) api("POST", `/api/v1/rooms/${roomId}/read`, { up_to_seq: head }).catch(() => {});
  let lastTyping = 0;
  const input = el("input", { name: "body", autocomplete: "off", maxlength: 4000, oninput: () => {
    if (Date.now() - lastTyping > 2000) {
      lastTyping = Date.now();
      live.send({ type: "typing", room_id: roomId });
    }
  } });
  // Attachments go up over tus first; the message then names them (the API contract Chat).
  const attach = el("input", { type: "file", multiple: true, "aria-label": "Attach files" });
  const attachProgress = el("progress", { max: 1, value: 0, hidden: true, "aria-label": "Attachment upload progress" });
  const send = el("form", { "aria-label": "Send a message", onsubmit: (event) => {
    event.preventDefault();
    const files = [...attach.files];
    const body = input.value || files.map((f) => f.name).join(", ");
    if (!body) return say("Write a message or attach a file", true);
    const clientMsgId = crypto.randomUUID();
    // Over HTTP: the answer says it was stored; the WebSocket brings it to every member.
    attempt(async () => {
      const fileIds = [];
      attachProgress.hidden = !files.length;
      for (const file of files) fileIds.push(await tusUpload(file, attachProgress, typing));
      attachProgress.hidden = true;
      const message = { body, client_msg_id: clientMsgId };
      if (fileIds.length) message.file_ids = fileIds;
      const sent = await api("POST", `/api/v1/rooms/${roomId}/messages`, message);
      show({ seq: sent.seq, body, sender_id: session.userId, file_ids: fileIds });
      input.value = "";
      attach.value = "";
    });
  } }, el("label", { class: "grow" }, "Message", input), attach, el("button", { type: "submit" }, "Send"), attachProgress);
  const addMember = el("form", { "aria-label": "Add a member", onsubmit: (event) => {
    event.preventDefault();
    const { username } = formData(event.target);
    attempt(async () => {
      await api("POST", `/api/v1/rooms/${roomId}/members`, { user_id: await userIdOf(username.trim()) });
      say(`${username} added`);
      event.target.reset();
    });
  } }, el("label", {}, "Add member (username)", el("input", { name: "username", required: true, autocomplete: "off" })), el("button", { class: "secondary", type: "submit" }, "Add"));
  return el("section", { "data-room-view": roomId }, el("h2", {}, "Room"), people, messages, typing, send, addMember);
}

// ---- files: tus uploads that resume after a reload ---------------------------------------

const CHUNK = 256 * 1024;

function b64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

/** Uploads `file` over tus, resuming an upload of the same name and size this browser began. */
async function tusUpload(file, progress, note) {
  const key = `chronicle.tus:${session.userId}:${file.name}:${file.size}`;
  const auth = { authorization: `Bearer ${session.token}`, "tus-resumable": "1.0.0" };
  let url = localStorage.getItem(key);
  let offset = 0;
  if (url) {
    const head = await fetch(url, { method: "HEAD", headers: auth });
    if (head.ok) {
      offset = Number(head.headers.get("upload-offset"));
      note.textContent = `Resuming from ${offset} of ${file.size} bytes`;
    } else {
      url = null;
    }
  }
  if (!url) {
    const created = await fetch("/api/v1/files/tus", { method: "POST", headers: { ...auth, "upload-length": String(file.size),
      "upload-metadata": `filename ${b64(file.name)},filetype ${b64(file.type || "application/octet-stream")}` } });
    if (created.status !== 201) throw new Error(`the upload was refused (${created.status})`);
    url = new URL(created.headers.get("location"), location.href).href;
    localStorage.setItem(key, url);
  }
  let fileId = null;
  progress.value = offset / Math.max(file.size, 1);
  while (offset < file.size || (file.size === 0 && !fileId)) {
    const piece = file.slice(offset, offset + CHUNK);
    const patched = await fetch(url, { method: "PATCH", body: piece, headers: { ...auth,
      "content-type": "application/offset+octet-stream", "upload-offset": String(offset) } });
    if (patched.status !== 204) throw new Error(`the upload stopped at ${offset} bytes (${patched.status})`);
    offset = Number(patched.headers.get("upload-offset"));
    fileId = patched.headers.get("chronicle-file-id") || fileId;
    progress.value = offset / Math.max(file.size, 1);
    if (file.size === 0) break;
  }
  localStorage.removeItem(key);
  return fileId;
}

async function filesView() {
  const files = await api("GET", "/api/v1/files?limit=200");
  const progress = el("progress", { max: 1, value: 0, "aria-label": "Upload progress" });
  const note = el("p", { class: "muted", "aria-live": "polite" });
  const picker = el("input", { type: "file", name: "file", "aria-label": "File to upload" });
  const upload = el("form", { "aria-label": "Upload a file", onsubmit: (event) => {
    event.preventDefault();
    const file = picker.files[0];
    if (!file) return;
    attempt(async () => {
      await tusUpload(file, progress, note);
      await render();
      say(`Uploaded ${file.name}`);
    });
  } }, picker, el("button", { type: "submit" }, "Upload"));
  const rows = files.items.map((f) => el("tr", { "data-file": f.id },
    el("td", {}, f.name), el("td", {}, bytes(f.size)), el("td", {},
      el("button", { class: "secondary", onclick: () => attempt(() => download(f.id, f.name)) }, "Download"), " ",
      el("button", { class: "secondary", onclick: (event) => attempt(async () => {
        const share = await api("POST", `/api/v1/files/${f.id}/shares`, { expires_in_seconds: 86400 });
        event.target.replaceWith(el("a", { href: share.url }, "share link (24 h)"));
      }) }, "Share"), " ",
      f.content_type?.startsWith("image/") ? el("img", { alt: `Thumbnail of ${f.name}`, "data-thumb": f.id, height: 64 }) : null)));
  // The pictures as a grid of squares, each cropped around its centre.
  const pictures = files.items.filter((f) => f.content_type?.startsWith("image/"));
  const grid = el("ul", { class: "pictures", "aria-label": "Your pictures" }, pictures.map((f) =>
    el("li", {}, el("figure", {}, el("img", { alt: f.name, "data-square": f.id, width: 96, height: 96 }), el("figcaption", {}, f.name)))));
  // Thumbnails need the token: fetched, then shown from a blob.
  const thumbs = [
    ...rows.flatMap((row) => [...row.querySelectorAll("img[data-thumb]")]).map((img) => [img, img.dataset.thumb, THUMB]),
    ...[...grid.querySelectorAll("img[data-square]")].map((img) => [img, img.dataset.square, SQUARE]),
  ];
  for (const [img, id, box] of thumbs) {
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    fileUrl(id, box).then((url) => (img.src = url)).catch(() => (img.alt = `No thumbnail: ${img.alt}`));
  }
  return [el("section", {}, el("h2", {}, "Upload (tus, resumable)"), upload, progress, note),
    pictures.length ? el("section", {}, el("h2", {}, "Your pictures"), grid) : null,
    el("section", {}, el("h2", {}, "Your files"), el("table", {}, el("tbody", {}, rows)))].filter(Boolean);
}

// ---- operations -----------------------------------------------------------------------

async function opsView() {
  const body = el("tbody");
  const rate = el("p", { class: "muted", "aria-live": "polite" });
  let last = null;
  const refresh = async () => {
    const readers = await api("GET", "/api/v1/projections");
    const head = Math.max(0, ...readers.map((r) => r.stream_last_seq));
    if (last) rate.textContent = `${((head - last.head) / ((Date.now() - last.at) / 1000)).toFixed(1)} events/s into the log`;
    last = { head, at: Date.now() };
    body.replaceChildren(...readers.map((r) => el("tr", { "data-reader": r.name },
      el("td", {}, r.name), el("td", {}, r.status), el("td", {}, r.checkpoint), el("td", {}, r.lag_events), el("td", { "data-parked": r.parked ?? 0 }, r.parked ?? 0),
      el("td", {}, r.parked && roles().includes("staff") ? [
        el("button", { class: "secondary", onclick: () => attempt(async () => {
          const answer = await api("POST", `/api/v1/projections/${r.name}/retry`, {});
          say(`Retried: ${answer.applied} applied, ${answer.still_parked} still parked`);
          if (parkedOf.dataset.reader === r.name) parkedOf.replaceChildren();
        }) }, "Retry parked"), " ",
        el("button", { class: "secondary", onclick: () => attempt(() => showParked(r.name)) }, "Why parked?"),
      ] : ""))));
  };
  // What a reader parked, with the error it gave (staff only).
  const parkedOf = el("div", { "aria-live": "polite" });
  const showParked = async (name) => {
    const parked = await api("GET", `/api/v1/projections/${name}/parked`);
    parkedOf.dataset.reader = name;
    parkedOf.replaceChildren(el("h3", {}, `Parked by ${name}`), el("ul", { class: "plain", "aria-label": `Parked by ${name}` },
      parked.map((p) => el("li", { "data-parked-seq": p.stream_seq },
        `#${p.stream_seq} ${p.event_type} (${p.attempts} attempts, last ${p.last_failed_at}): `, el("code", {}, p.error)))));
  };
  await refresh();
  const timer = setInterval(() => attempt(refresh), 2000);
  cleanups.push(() => clearInterval(timer));
  const jobs = await api("GET", "/api/v1/jobs?limit=50");
  return [el("section", {}, el("h2", {}, "Readers of the log"), rate,
    el("table", {}, el("thead", {}, el("tr", {}, ["Name", "Status", "Checkpoint", "Lag", "Parked", ""].map((h) => el("th", {}, h)))), body),
    parkedOf),
  el("section", {}, el("h2", {}, "Your jobs"), el("ul", { class: "plain" }, jobs.items.map((j) => {
    const runs = el("ul", { class: "muted", "aria-label": `Runs of ${j.name}` });
    const on = j.schedule?.on_event;
    const when = on ? `on ${on.types.join(", ")}${on.context ? ` (${on.context})` : ""}` : `next ${j.next_run_at ?? "—"}`;
    return el("li", {}, `${j.name} · ${j.status ?? ""} · ${when} `,
      el("button", { class: "secondary", onclick: () => attempt(async () => {
        const page = await api("GET", `/api/v1/jobs/${j.id}/runs?limit=20`);
        const about = (r) => r.event?.type ? ` for ${r.event.type} ${r.event.aggregate_id} (#${r.event.stream_seq})` : "";
        runs.replaceChildren(...page.items.map((r) => el("li", {}, `${r.due_at}: ${r.outcome ?? "running"}${about(r)} (attempt ${r.attempt})${r.error ? ` · ${r.error}` : ""}`)));
        if (!page.items.length) runs.replaceChildren(el("li", {}, "no runs yet"));
      }) }, "Runs"), runs);
  })))];
}

// ---- monitoring: dashboards, explore, alerts and rules ----------------------------------

// Each range with the step its charts ask for: at most 360 points per series. Steps of
// 5 minutes or more are answered from the per-minute rollups.
const RANGES = {
  "15m": { seconds: 900, step: 10, label: "15 min" },
  "1h": { seconds: 3600, step: 15, label: "1 h" },
  "24h": { seconds: 86400, step: 300, label: "24 h" },
  "7d": { seconds: 604800, step: 1800, label: "7 d" },
};
const AGGREGATIONS = ["avg", "min", "max", "sum", "rate", "p99"];
// Business series are counted per minute: finer steps would show a spike a minute.
const PER_MINUTE = 60;
const DASHBOARDS = {
  system: { title: "System", charts: [
    { title: "CPU", metric: "chronicle_host_resource_ratio", labels: "resource:cpu", agg: "avg", unit: "ratio" },
    { title: "Memory", metric: "chronicle_host_resource_ratio", labels: "resource:memory", agg: "avg", unit: "ratio" },
    { title: "Disk", metric: "chronicle_host_resource_ratio", labels: "resource:disk", agg: "max", unit: "ratio" },
    { title: "Network", metric: "chronicle_host_network_bytes_per_second", agg: "avg", unit: "bytes/s" },
  ] },
  application: { title: "Application", charts: [
    { title: "Requests per second by route", metric: "chronicle_http_requests_per_second", agg: "avg" },
    { title: "p99 latency by route", metric: "chronicle_http_latency_p99_seconds", agg: "max", unit: "s" },
    { title: "Error rate (5xx) by route", metric: "chronicle_http_error_ratio", agg: "avg", unit: "ratio" },
    { title: "Commands per second by outcome", metric: "chronicle_commands_per_second", agg: "avg" },
    { title: "Subscriber lag (events)", metric: "chronicle_subscriber_lag_events", agg: "max" },
    { title: "Parked events", metric: "chronicle_subscriber_parked_events", agg: "max" },
  ] },
  business: { title: "Business", charts: [
    { title: "Orders placed", metric: "business_orders_placed", agg: "sum", minStep: PER_MINUTE, bars: true },
    { title: "Revenue", metric: "business_revenue_cents", agg: "sum", unit: "cents", minStep: PER_MINUTE, bars: true },
    { title: "Messages sent", metric: "business_messages_sent", agg: "sum", minStep: PER_MINUTE, bars: true },
    { title: "Bytes uploaded", metric: "business_bytes_uploaded", agg: "sum", unit: "bytes", minStep: PER_MINUTE, bars: true },
    { title: "Failed job runs", metric: "business_job_runs_failed", agg: "sum", minStep: PER_MINUTE, bars: true },
    { title: "Carts checked out", metric: "business_carts_checked_out", agg: "sum", minStep: PER_MINUTE, bars: true },
    { title: "Carts abandoned", metric: "business_carts_abandoned", agg: "sum", minStep: PER_MINUTE, bars: true },
  ] },
};
// Most series one chart draws (the largest); the rest are counted, not drawn.
const MOST_SERIES = 8;
const COLORS = ["#2657d6", "#c2410c", "#15803d", "#9333ea", "#b91c1c", "#0e7490", "#a16207", "#475569"];
const REFRESH_MS = 5000;

/** `value` as a person reads it, in `unit`. */
function figure(value, unit) {
  if (value === null || value === undefined) return "—";
  if (unit === "ratio") return `${(value * 100).toFixed(1)} %`;
  if (unit === "bytes") return bytes(Math.round(value));
  if (unit === "bytes/s") return `${bytes(Math.round(value))}/s`;
  if (unit === "s") return value < 1 ? `${(value * 1000).toFixed(1)} ms` : `${value.toFixed(2)} s`;
  if (unit === "cents") return money(value);
  if (Number.isInteger(value) || Math.abs(value) >= 1000) return Math.round(value).toLocaleString();
  return String(Number(value.toPrecision(4)));
}

/** A time in the viewer's own zone: the clock for a short range, the date too for a long one. */
function when(seconds, long = false) {
  const at = new Date(seconds * 1000);
  return long ? at.toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : at.toLocaleTimeString();
}

/** Names for `series`: the labels that tell them apart (those the chart fixes, and those
 * every series shares, say nothing), the value alone when only one label differs. */
function seriesNames(series, fixed) {
  const keys = [...new Set(series.flatMap((s) => Object.keys(s.labels || {})))].filter((key) => !fixed.includes(key));
  const differ = series.length > 1 ? keys.filter((key) => new Set(series.map((s) => s.labels?.[key])).size > 1) : keys;
  return series.map((s) => {
    const shown = differ.filter((key) => s.labels?.[key] !== undefined);
    // Nothing tells it apart (one series): its own labels' values, the fixed ones too.
    if (!shown.length) return Object.values(s.labels || {}).join(", ") || "all";
    return differ.length === 1 ? String(s.labels[shown[0]]) : shown.map((key) => `${key}=${s.labels[key]}`).join(", ");
  });
}

/** One chart: a uPlot canvas, "No data" for an empty range, and the latest points as a
 * table (what a screen reader, or a test, reads). Refreshing changes its data in place. */
class Chart {
  constructor(spec) {
    this.spec = spec;
    this.plot = null;
    this.keys = "";
    this.box = el("div", { class: "plot", "aria-hidden": "true" });
    this.note = el("p", { class: "muted nodata", hidden: true });
    this.more = el("p", { class: "muted", hidden: true });
    this.table = el("table", {});
    this.node = el("figure", { class: "chart", "data-chart": spec.title, "data-state": "loading", "aria-label": spec.title },
      el("figcaption", {}, spec.title), this.box, this.note, this.more,
      this.details = el("details", { hidden: true }, el("summary", {}, `Latest values: ${spec.title}`), el("div", { class: "scroll" }, this.table)));
    this.resizer = new ResizeObserver(() => this.plot?.setSize(this.size()));
    this.resizer.observe(this.box);
  }

  size() {
    return { width: Math.max(240, this.box.clientWidth || view.clientWidth - 48), height: 200 };
  }

  /** The query this chart asks, for `range` ending now (aligned to the step, so the buckets
   * stay where they were from one refresh to the next). */
  url(range) {
    const step = Math.max(range.step, this.spec.minStep || 0);
    const to = Math.ceil(Date.now() / 1000 / step) * step;
    const params = new URLSearchParams({ metric: this.spec.metric, from: to - range.seconds, to, step: `${step}s`, agg: this.spec.agg });
    if (this.spec.labels) params.set("labels", this.spec.labels);
    return `/api/v1/monitoring/query?${params}`;
  }

  async refresh(range, uPlot) {
    const url = this.url(range);
    const answer = await api("GET", url);
    if (this.closed) return; // the view was left while the answer was on its way
    const fixed = (this.spec.labels || "").split(",").map((pair) => pair.split(":")[0]);
    const peak = (s) => Math.max(...s.points.map((p) => p[1]));
    const all = answer.series.filter((s) => s.points.length);
    const largest = all.slice().sort((a, b) => peak(b) - peak(a)).slice(0, MOST_SERIES);
    const names = seriesNames(largest, fixed);
    const series = largest.map((s, i) => ({ name: names[i], points: s.points })).sort((a, b) => a.name.localeCompare(b.name));
    const params = new URL(url, location.href).searchParams;
    // The x axis spans the whole range asked, however few points it has.
    this.window = [Number(params.get("from")), Number(params.get("to"))];
    this.node.dataset.query = url;
    this.more.hidden = all.length <= MOST_SERIES;
    this.more.textContent = `The ${MOST_SERIES} largest of ${all.length} series are drawn.`;
    if (!series.length) {
      this.node.dataset.state = "empty";
      this.note.textContent = `No data in the last ${range.label}.`;
      this.note.hidden = false;
      this.box.hidden = true;
      this.details.hidden = true;
      this.plot?.destroy();
      this.plot = null;
      this.keys = "";
      this.table.replaceChildren();
      return;
    }
    // Every series on the times any of them has; a gap is null (no line drawn across it).
    const times = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const data = [times, ...series.map((s) => {
      const at = new Map(s.points);
      return times.map((t) => (at.has(t) ? at.get(t) : null));
    })];
    this.note.hidden = true;
    this.box.hidden = false;
    this.details.hidden = false;
    const keys = series.map((s) => s.name).join("\n");
    if (this.plot && keys === this.keys) {
      this.plot.setData(data);
    } else {
      // New series (a route seen for the first time): drawn anew once.
      this.plot?.destroy();
      this.keys = keys;
      const unit = this.spec.unit;
      this.plot = new uPlot({
        ...this.size(),
        legend: { live: false },
        // Counts per minute (business series) as bars, levels as lines.
        series: [{}, ...series.map((s, i) => ({ label: s.name, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
          points: { size: 4 }, ...(this.spec.bars ? { paths: uPlot.paths.bars({ size: [0.8, 24] }), fill: `${COLORS[i % COLORS.length]}66` } : {}) }))],
        axes: [{ space: 80 }, { size: 86, values: (u, ticks) => ticks.map((v) => figure(v, unit)) }],
        scales: {
          x: { time: true, range: () => this.window },
          y: { range: (u, min, max) => [Math.min(0, min), max > min ? max : min + 1] },
        },
      }, data, this.box);
    }
    this.node.dataset.state = "data";
    this.drawTable(times, series, range);
  }

  /** The newest ten times, newest first, a row per series with a value then (narrow enough
   * for a phone however many series there are); the raw value is kept beside the figure. */
  drawTable(times, series, range) {
    const rows = times.slice(-10).reverse().flatMap((t) => series.flatMap((s) => {
      const point = s.points.find((p) => p[0] === t);
      return point ? [el("tr", { "data-at": t, "data-series": s.name },
        el("td", {}, when(t, range.seconds > 86400)), el("td", { class: "series-name" }, s.name),
        el("td", { "data-value": point[1] }, figure(point[1], this.spec.unit)))] : [];
    }));
    this.node.dataset.series = JSON.stringify(series.map((s) => s.name));
    this.table.replaceChildren(
      el("thead", {}, el("tr", {}, ["Time", "Series", "Value"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows));
  }

  destroy() {
    this.closed = true;
    this.resizer.disconnect();
    this.plot?.destroy();
  }
}

/** Charts of `specs` for the range in the URL, refreshed every few seconds. */
async function chartGrid(specs, range, uPlot) {
  const charts = specs.map((spec) => new Chart(spec));
  const refresh = () => Promise.all(charts.map((chart) => chart.refresh(range, uPlot)));
  await refresh();
  const timer = setInterval(() => attempt(refresh), REFRESH_MS);
  cleanups.push(() => {
    clearInterval(timer);
    charts.forEach((chart) => chart.destroy());
  });
  return el("div", { class: "charts" }, charts.map((chart) => chart.node));
}

/** The range picker: it keeps the choice in the URL. */
function rangePicker(current, onPick) {
  return el("label", {}, "Range", el("select", { name: "range", onchange: (event) => onPick(event.target.value) },
    Object.entries(RANGES).map(([key, range]) => el("option", { value: key, selected: key === current }, range.label))));
}

/** The view's query string (`#/monitoring/explore?metric=…`). */
function hashParams() {
  return new URLSearchParams(location.hash.split("?")[1] || "");
}

/** Moves to `#/monitoring/<tab>?<params>`; draws the view again when it is there already. */
function goMonitoring(tab, params) {
  const hash = `#/monitoring/${tab}${params.toString() ? `?${params}` : ""}`;
  if (location.hash === hash) render();
  else location.hash = hash;
}

const MONITORING_TABS = [["system", "System"], ["application", "Application"], ["business", "Business"],
  ["explore", "Explore"], ["alerts", "Alerts"], ["rules", "Rules"]];

async function monitoringView(tab = "system") {
  const staff = roles().includes("staff");
  const tabs = el("nav", { "aria-label": "Monitoring", class: "tabs" },
    MONITORING_TABS.filter(([key]) => key !== "rules" || staff).map(([key, title]) =>
      el("a", { href: `#/monitoring/${key}`, "aria-current": key === tab ? "page" : null }, title)));
  const { default: uPlot } = await import("/console/vendor/uPlot.esm.js");
  const params = hashParams();
  const rangeKey = RANGES[params.get("range")] ? params.get("range") : "1h";
  let body;
  if (DASHBOARDS[tab]) {
    const board = DASHBOARDS[tab];
    body = el("section", { "data-dashboard": tab }, el("h2", {}, `${board.title} dashboard`),
      el("form", { "aria-label": "Dashboard range", onsubmit: (e) => e.preventDefault() },
        rangePicker(rangeKey, (key) => goMonitoring(tab, new URLSearchParams({ range: key })))),
      await chartGrid(board.charts, RANGES[rangeKey], uPlot));
  } else if (tab === "explore") {
    body = await exploreView(params, rangeKey, uPlot);
  } else if (tab === "alerts") {
    body = await alertsView(staff);
  } else if (tab === "rules" && staff) {
    body = await rulesView();
  } else {
    throw new Error("There is no such monitoring view");
  }
  return [el("section", {}, el("h2", {}, "Monitoring"), tabs), body].flat();
}

/** Any metric, with labels, an aggregation and a range; the URL keeps the query. */
async function exploreView(params, rangeKey, uPlot) {
  const known = await api("GET", "/api/v1/monitoring/metrics");
  const metric = known.some((m) => m.metric === params.get("metric")) ? params.get("metric") : known[0]?.metric;
  const chosen = new Map((params.get("labels") || "").split(",").filter(Boolean).map((pair) => pair.split(/:(.*)/s).slice(0, 2)));
  const agg = AGGREGATIONS.includes(params.get("agg")) ? params.get("agg") : "avg";
  const keys = known.find((m) => m.metric === metric)?.labels || [];
  const form = el("form", { "aria-label": "Explore a metric", onsubmit: (event) => {
    event.preventDefault();
    const values = new FormData(event.target);
    const labels = keys.map((key) => [key, (values.get(`label:${key}`) || "").trim()]).filter(([, v]) => v)
      .map(([k, v]) => `${k}:${v}`).join(",");
    const next = new URLSearchParams({ metric: values.get("metric"), agg: values.get("agg"), range: values.get("range") });
    if (labels && values.get("metric") === metric) next.set("labels", labels);
    goMonitoring("explore", next);
  } },
    el("label", {}, "Metric", el("select", { name: "metric", onchange: (e) => e.target.form.requestSubmit() },
      known.map((m) => el("option", { value: m.metric, selected: m.metric === metric }, m.metric)))),
    keys.map((key) => el("label", {}, `Label ${key}`, el("input", { name: `label:${key}`, value: chosen.get(key) || "", autocomplete: "off", placeholder: "any" }))),
    el("label", {}, "Aggregation", el("select", { name: "agg" }, AGGREGATIONS.map((a) => el("option", { value: a, selected: a === agg }, a)))),
    rangePicker(rangeKey, () => {}),
    el("button", { type: "submit" }, "Show"));
  if (!metric) return el("section", { "data-explore": "" }, el("h2", {}, "Explore"), el("p", { class: "muted nodata" }, "No metric has been reported yet."));
  const labels = [...chosen].filter(([key, value]) => keys.includes(key) && value).map(([k, v]) => `${k}:${v}`).join(",");
  const spec = { title: `${agg} of ${metric}${labels ? ` {${labels}}` : ""}`, metric, agg, labels: labels || undefined,
    minStep: metric.startsWith("business_") ? PER_MINUTE : 0 };
  return el("section", { "data-explore": metric }, el("h2", {}, "Explore"), form, await chartGrid([spec], RANGES[rangeKey], uPlot));
}

const ALERT_STATES = ["firing", "pending", "acknowledged", "resolved"];

/** An alert's rule by name (a deleted rule by the end of its id). */
function ruleOf(alert) {
  return alert.rule_name ?? `deleted rule …${alert.rule_id.slice(-6)}`;
}

/** Alerts by state, newest first in each; staff acknowledge a firing one from the list. */
async function alertsView(staff) {
  const list = el("div", { "aria-live": "polite" });
  const draw = async () => {
    const alerts = await api("GET", "/api/v1/monitoring/alerts?limit=200");
    list.replaceChildren(...ALERT_STATES.map((state) => {
      const these = alerts.filter((a) => a.state === state);
      return el("section", { class: "inner", "data-alert-state": state },
        el("h3", {}, `${state[0].toUpperCase()}${state.slice(1)} (${these.length})`),
        these.length ? el("div", { class: "scroll" }, el("table", {},
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Alert"), el("th", { scope: "col" }, "Value"),
            el("th", { scope: "col", class: "narrow-hide" }, state === "resolved" ? "Resolved" : "Acknowledged by"), el("th", { scope: "col" }, ""))),
          el("tbody", {}, these.map((a) => el("tr", { "data-alert": a.id },
            el("td", {}, ruleOf(a), a.severity ? el("span", { class: "muted" }, ` (${a.severity})`) : null,
              el("br"), el("span", { class: "muted" }, `since ${when(Date.parse(a.started_at) / 1000, true)}`)),
            el("td", { "data-value": a.value ?? "" }, figure(a.value)),
            el("td", { class: "narrow-hide" }, state === "resolved" ? when(Date.parse(a.resolved_at) / 1000, true) : a.acknowledged_by ? person(a.acknowledged_by) : "—"),
            el("td", {}, state === "firing" && staff ? el("button", { class: "secondary", "aria-label": `Acknowledge ${ruleOf(a)}`,
              onclick: () => attempt(async () => {
                const answer = await api("POST", `/api/v1/monitoring/alerts/${encodeURIComponent(a.id)}/acknowledge`, {});
                // Listed as acknowledged once the list has the version the answer gave.
                await api("GET", `/api/v1/monitoring/alerts?rule_id=${encodeURIComponent(a.rule_id)}&min_version=${answer.version}`);
                say(`Acknowledged: ${ruleOf(a)}`);
                await Promise.all([draw(), alertBadge.refresh()]);
              }) }, "Acknowledge") : "")))))) : el("p", { class: "muted" }, `No ${state} alerts.`));
    }));
  };
  await draw();
  const timer = setInterval(() => attempt(draw), REFRESH_MS);
  cleanups.push(() => clearInterval(timer));
  return el("section", { "data-alerts": "" }, el("h2", {}, "Alerts"), list);
}

const RULE_FIELDS = ["name", "metric", "labels", "agg", "window_seconds", "op", "threshold", "for_seconds", "severity", "webhook", "email"];

/** The rules (staff): create, edit (If-Match the version shown) and delete; the API's own
 * messages are shown beside the fields they name. */
async function rulesView() {
  const [rules, known] = await Promise.all([api("GET", "/api/v1/monitoring/rules"), api("GET", "/api/v1/monitoring/metrics")]);
  const editing = new URLSearchParams(location.hash.split("?")[1] || "").get("edit");
  const rule = rules.find((r) => r.id === editing);
  const errors = el("ul", { class: "plain error", "aria-label": "What the API refused" });
  const field = (name, label, input) => el("label", { "data-field": name }, label, input);
  const value = (v) => (v === undefined || v === null ? "" : String(v));
  const labels = Object.entries(rule?.labels || {}).map(([k, v]) => `${k}:${v}`).join(",");
  const webhook = rule?.channels?.find((c) => c.kind === "webhook")?.url;
  const email = rule?.channels?.find((c) => c.kind === "email")?.to;
  const select = (name, options, current) => el("select", { name }, options.map((o) => el("option", { value: o, selected: o === current }, o)));
  const form = el("form", { "aria-label": rule ? `Edit rule ${rule.name}` : "Create a rule", onsubmit: (event) => {
    event.preventDefault();
    const f = formData(event.target);
    const number = (text) => (text.trim() === "" ? undefined : Number(text));
    // `k:v` pairs; one without its colon is refused here, in the words the query API uses
    // for the same mistake, rather than dropped.
    const pairs = f.labels.split(",").map((p) => p.trim()).filter(Boolean);
    if (pairs.some((p) => !p.includes(":"))) {
      errors.replaceChildren(el("li", { "data-error-field": "labels" }, "labels: k:v pairs separated by commas"));
      return;
    }
    const body = {
      name: f.name, metric: f.metric, agg: f.agg, op: f.op, threshold: number(f.threshold), severity: f.severity,
      window_seconds: number(f.window_seconds), for_seconds: number(f.for_seconds),
      labels: Object.fromEntries(pairs.map((p) => p.split(/:(.*)/s).slice(0, 2))),
      channels: [f.webhook.trim() && { kind: "webhook", url: f.webhook.trim() }, f.email.trim() && { kind: "email", to: f.email.trim() }].filter(Boolean),
    };
    attempt(async () => {
      errors.replaceChildren();
      try {
        const answer = rule
          ? await api("PATCH", `/api/v1/monitoring/rules/${rule.id}`, body, { "if-match": `"${rule.version}"` })
          : await api("POST", "/api/v1/monitoring/rules", body);
        await until(() => api("GET", `/api/v1/monitoring/rules/${answer.id}`).catch(() => null), (r) => r?.version >= answer.version);
        say(rule ? `Rule ${body.name} changed` : `Rule ${body.name} created`);
        goMonitoring("rules", new URLSearchParams());
      } catch (error) {
        const fields = error.problem?.errors || [];
        errors.replaceChildren(...(fields.length ? fields.map((e) => el("li", { "data-error-field": e.field }, `${e.field}: ${e.message}`))
          : [el("li", { "data-error-field": "" }, error.message)]));
        if (error.problem?.status === 412) errors.append(el("li", {}, "Someone changed this rule meanwhile: open it again."));
        throw error;
      }
    });
  } },
    field("name", "Name", el("input", { name: "name", required: true, value: value(rule?.name) })),
    field("metric", "Metric", el("input", { name: "metric", required: true, list: "known-metrics", autocomplete: "off", value: value(rule?.metric) })),
    el("datalist", { id: "known-metrics" }, known.map((m) => el("option", { value: m.metric }))),
    field("labels", "Labels (k:v, comma separated)", el("input", { name: "labels", autocomplete: "off", value: labels })),
    field("agg", "Aggregation", select("agg", AGGREGATIONS, rule?.agg ?? "avg")),
    field("window_seconds", "Window (s)", el("input", { name: "window_seconds", type: "number", value: value(rule?.window_seconds ?? 60) })),
    field("op", "Comparison", select("op", [">", ">=", "<", "<="], rule?.op ?? ">")),
    field("threshold", "Threshold", el("input", { name: "threshold", required: true, inputmode: "decimal", value: value(rule?.threshold) })),
    field("for_seconds", "For (s)", el("input", { name: "for_seconds", type: "number", value: value(rule?.for_seconds ?? 0) })),
    field("severity", "Severity", select("severity", ["info", "warning", "critical"], rule?.severity ?? "warning")),
    field("webhook", "Webhook URL", el("input", { name: "webhook", autocomplete: "off", value: value(webhook) })),
    field("email", "Email to", el("input", { name: "email", type: "email", autocomplete: "off", value: value(email) })),
    el("button", { type: "submit" }, rule ? "Save rule" : "Create rule"),
    rule ? el("a", { href: "#/monitoring/rules" }, "Cancel") : null,
    el("div", { role: "alert", class: "wide" }, errors));
  const condition = (r) => `${r.agg} of ${r.metric}${Object.keys(r.labels || {}).length ? ` {${Object.entries(r.labels).map(([k, v]) => `${k}:${v}`).join(",")}}` : ""} over ${r.window_seconds} s ${r.op} ${r.threshold} for ${r.for_seconds} s`;
  const rows = rules.map((r) => el("tr", { "data-rule": r.id },
    el("td", {}, r.name, el("span", { class: "muted" }, ` (${r.severity})`)), el("td", { class: "series-name" }, condition(r)),
    el("td", { class: "actions" },
      el("a", { href: `#/monitoring/rules?edit=${encodeURIComponent(r.id)}`, "aria-label": `Edit ${r.name}` }, "Edit"),
      el("button", { class: "secondary", "aria-label": `Delete ${r.name}`, onclick: () => attempt(async () => {
        if (!confirm(`Delete the rule ${r.name}?`)) return;
        await api("DELETE", `/api/v1/monitoring/rules/${r.id}`);
        await until(() => api("GET", "/api/v1/monitoring/rules"), (all) => !all.some((x) => x.id === r.id));
        // Said once the list is drawn again, so the line describes the page on screen.
        await render();
        say(`Rule ${r.name} deleted`);
      }) }, "Delete"))));
  return [el("section", { "data-rules": "" }, el("h2", {}, rule ? `Edit ${rule.name}` : "New rule"), form),
    el("section", {}, el("h2", {}, "Rules"), rules.length
      ? el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, ["Rule", "Condition", ""].map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)))
      : el("p", { class: "muted" }, "No rules yet."))];
}

/** The header's badge: how many alerts fire now, on every view, a link to them. */
const alertBadge = {
  timer: null,
  async refresh() {
    const badge = document.getElementById("alerts-badge");
    if (!session.token) {
      badge.hidden = true;
      return;
    }
    const firing = await api("GET", "/api/v1/monitoring/alerts?state=firing&limit=1000").catch(() => null);
    if (!firing) return;
    badge.hidden = firing.length === 0;
    badge.dataset.firing = firing.length;
    badge.textContent = `${firing.length} alert${firing.length === 1 ? "" : "s"} firing`;
  },
  start() {
    if (this.timer) return;
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  },
};

// ---- routing --------------------------------------------------------------------------

let cleanups = [];
const sections = { shop: shopView, blog: blogView, chat: chatView, files: filesView, ops: opsView, monitoring: monitoringView };
let shown = null; // the hash on screen
let renders = 0; // a render that a newer one overtook is dropped

async function render() {
  const generation = ++renders;
  shown = location.hash || "#/shop";
  for (const cleanup of cleanups) cleanup();
  cleanups = [];
  const me = document.getElementById("me");
  if (!session.token) {
    me.replaceChildren();
    view.replaceChildren(...authView());
    return;
  }
  me.replaceChildren(`Signed in as ${session.username} `, el("button", { class: "secondary", onclick: signOut }, "Sign out"));
  const [, name = "shop", id] = location.hash.split("?")[0].split("/");
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === `#/${name}`);
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
  }
  try {
    const content = await (sections[name] || shopView)(id);
    if (generation !== renders) return;
    view.replaceChildren(...[content].flat());
    document.body.dataset.view = name;
    document.body.dataset.hash = shown;
    document.body.dataset.rendered = String(generation);
  } catch (error) {
    if (generation !== renders) return;
    view.replaceChildren(el("section", {}, el("p", { class: "error" }, error.message)));
  }
}

// `#/shop` is where an empty hash already is: going there redraws nothing.
// After a move, the keyboard (and a screen reader) starts at the new view.
window.addEventListener("hashchange", () => {
  if ((location.hash || "#/shop") !== shown) render().then(() => view.focus({ preventScroll: true }));
});
live.connect();
alertBadge.start();
render();
