// The web console in real headless Chromium (Debian's `chromium`, driven by playwright-core):
// the shop's cart (quantities, a price change followed, a discontinued item refused) checked
// out with a coupon and the order seen turning `reserved` live, two browsers chatting live
// with an attachment and a dropped WebSocket recovered, a post written with a live preview and
// found by search, a file upload interrupted by a reload and resumed, operations; axe-core
// checks each view against WCAG 2.1 A and AA.
//
// node e2e.mjs <base URL> <artifacts dir> [main | retry <reader> | monitoring]: `retry` signs
// up a staff user and retries what <reader> parked (console.rs parks it first); `monitoring`
// reports samples and checks the dashboards, explore, rules and alerts (after `main`, whose
// orders, messages and uploads the business dashboard shows). Screenshots go to the
// artifacts dir; any failed check, or any error in a page, exits non-zero.

import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const [base, artifacts, scenario = "main", ...extra] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As root (CI containers) Chromium runs only without its sandbox.
  args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
});
const pageErrors = [];
const pages = new Map();
let step = "start";

function check(condition, what) {
  if (!condition) throw new Error(`${step}: ${what}`);
}

/** `name` with a capital: the display name each person signs up with. */
function displayName(name) {
  return name[0].toUpperCase() + name.slice(1);
}

/** A WebSocket relay the test controls: every socket of a page goes through it, so the test
 * can drop them (as a network would) and hold new ones back. Frames are relayed unchanged;
 * those the page sends are kept in `sent`. */
function relay() {
  const state = { hold: false, open: [], sent: [] };
  state.route = (ws) => {
    if (state.hold) {
      ws.close({ code: 4001, reason: "held back by the test" });
      return;
    }
    const server = ws.connectToServer();
    ws.onMessage((message) => {
      state.sent.push(message);
      server.send(message);
    });
    state.open.push({ ws, server });
  };
  state.drop = async () => {
    for (const { ws, server } of state.open.splice(0)) {
      await server.close().catch(() => {});
      await ws.close({ code: 4000, reason: "dropped by the test" }).catch(() => {});
    }
  };
  return state;
}

/** A browser of its own, signed up as `name`; with `socket`, its WebSockets go through it. */
async function person(name, viewport = { width: 1200, height: 900 }, socket = null) {
  const context = await browser.newContext({ viewport });
  if (socket) await context.routeWebSocket(/\/ws\?token=/, socket.route);
  const page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(`${name}: ${error.message}`));
  page.setDefaultTimeout(20_000);
  pages.set(name, page);
  await page.goto(`${base}/`);
  const signUp = page.locator('form[aria-label="Sign up"]');
  await signUp.getByLabel("Username").fill(name);
  await signUp.getByLabel("Display name").fill(displayName(name));
  await signUp.getByLabel("Password").fill("correct horse battery");
  await signUp.getByRole("button", { name: "Sign up" }).click();
  await page.getByText(`Signed in as ${name}`).waitFor();
  return page;
}

/** The name of the view at `hash` (`#/chat/…` → `chat`). */
function viewOf(hash) {
  return hash.split("?")[0].split("/")[1];
}

/** Opens `hash` and waits until its view is drawn. */
async function open(page, hash) {
  if (page.url() !== `${base}/${hash}`) await page.goto(`${base}/${hash}`);
  // The view drawn for this very hash (not the one before it, of the same name).
  await page.waitForFunction(([name, hash]) => document.body.dataset.view === name && document.body.dataset.hash === hash, [viewOf(hash), hash]);
  await page.waitForLoadState("networkidle");
}

/** Loads `hash` afresh until `locator` shows (a read model may lag a command). */
async function eventually(page, hash, locator, seconds = 20) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    if (page.url() !== `${base}/${hash}`) await page.goto(`${base}/${hash}`);
    await page.reload();
    await open(page, hash);
    if (await locator.count()) return;
    check(Date.now() < deadline, `${hash} never showed ${locator}`);
    await page.waitForTimeout(300);
  }
}

async function shot(page, name) {
  await page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
}

function sha256(bytes) {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A `width`×`height` RGB PNG, a gradient (zlib's deflate, a CRC-32 of our own). */
function png(width, height) {
  const table = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = table[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
    const framed = Buffer.alloc(body.length + 8);
    framed.writeUInt32BE(data.length, 0);
    body.copy(framed, 4);
    framed.writeUInt32BE(crc(body), body.length + 4);
    return framed;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bits per sample
  header[9] = 2; // RGB
  const row = width * 3 + 1;
  const pixels = Buffer.alloc(row * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      pixels.set([(x * 255) / width, (y * 255) / height, 128], y * row + 1 + x * 3);
    }
  }
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header),
    chunk("IDAT", deflateSync(pixels)), chunk("IEND", Buffer.alloc(0))]);
}

/** Waits until `img` has loaded a picture: its natural width. */
async function loadedWidth(img) {
  return (await loadedSize(img))[0];
}

/** Waits until `img` has loaded a picture: its natural width and height. */
async function loadedSize(img) {
  await img.waitFor();
  return img.evaluate((node) => new Promise((resolve) => {
    const done = () => (node.complete && node.naturalWidth ? resolve([node.naturalWidth, node.naturalHeight]) : null);
    if (!done()) {
      node.addEventListener("load", done);
      const poll = setInterval(() => done() && clearInterval(poll), 100);
    }
  }));
}

const axeSource = readFileSync(new URL("./node_modules/axe-core/axe.min.js", import.meta.url), "utf8");

/** axe-core's WCAG 2.1 A and AA rules on the page as it is: no violation of any impact.
 * Evaluated through the DevTools protocol, so the page's own CSP stays as strict. */
async function accessible(page, what) {
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
  }));
  const found = result.violations.map((v) => `${v.id} [${v.impact}]: ${v.help} at ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
  check(found.length === 0, `${what} is not accessible: ${found.join("; ")}`);
}

/** Nothing on the page is wider than the screen (no sideways scrolling on a phone), not
 * even inside a table's scrolling box. */
async function fits(page, what) {
  const [wide, screen] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(wide <= screen, `${what} is ${wide} pixels wide on a ${screen}-pixel screen`);
  const boxes = await page.locator(".scroll").evaluateAll((all) => all.map((box) => [box.scrollWidth, box.clientWidth]));
  for (const [inner, outer] of boxes) check(inner <= outer, `a table in ${what} is ${inner} pixels wide in a ${outer}-pixel box`);
}

/** Presses Tab from the top of the page until `name` has the focus. */
async function tabTo(page, name) {
  await page.evaluate(() => document.activeElement?.blur());
  for (let presses = 0; presses < 40; presses++) {
    await page.keyboard.press("Tab");
    if ((await page.evaluate(() => document.activeElement?.textContent?.trim())) === name) return;
  }
  check(false, `Tab never reached ${name}`);
}

/** Clicks `button` and returns the SHA-256 of the file the browser downloads. */
async function downloaded(page, button) {
  const [download] = await Promise.all([page.waitForEvent("download"), button.click()]);
  return sha256(readFileSync(await download.path()));
}

async function main() {
  step = "signing up";
  const stranger = await browser.newPage();
  await stranger.goto(`${base}/`);
  await stranger.locator('form[aria-label="Sign up"]').waitFor();
  await accessible(stranger, "the sign-in page");
  await stranger.close();
  const alice = await person("alice");
  // Bob is on a phone-sized screen, and his WebSocket goes through a relay the test drops.
  const bobSocket = relay();
  const bob = await person("bob", { width: 390, height: 844 }, bobSocket);

  step = "staff make an item and a coupon; Bob puts it in his cart on his phone";
  await open(alice, "#/shop");
  const create = alice.locator('form[aria-label="Create an item"]');
  await create.getByLabel("SKU").fill("E2E-1");
  await create.getByLabel("Name").fill("Lantern");
  await create.getByLabel("Price (cents)").fill("250");
  await create.getByLabel("Initial stock").fill("5");
  const [created] = await Promise.all([
    alice.waitForResponse((r) => r.url().endsWith("/api/v1/inventory/items") && r.request().method() === "POST"),
    create.getByRole("button", { name: "Create item" }).click(),
  ]);
  check(created.status() === 201, `creating the item answered ${created.status()}`);
  const coupon = alice.locator('form[aria-label="Create a coupon"]');
  await coupon.getByLabel("Code").fill("GLOW10");
  await coupon.getByLabel("Percent off").fill("10");
  await coupon.getByLabel("Redemptions").fill("1");
  const [couponMade] = await Promise.all([
    alice.waitForResponse((r) => r.url().endsWith("/api/v1/coupons") && r.request().method() === "POST"),
    coupon.getByRole("button", { name: "Create coupon" }).click(),
  ]);
  check(couponMade.status() === 201, `creating the coupon answered ${couponMade.status()}`);
  await eventually(alice, "#/shop", alice.getByRole("cell", { name: "Lantern" }));
  await eventually(bob, "#/shop", bob.getByRole("cell", { name: "Lantern" }));
  await bob.getByRole("button", { name: "Add to cart: Lantern" }).click();
  await bob.locator('[data-cart-total="250"]').waitFor();

  step = "Alice fills her cart and changes its quantities";
  const addLantern = alice.getByRole("button", { name: "Add to cart: Lantern" });
  await addLantern.click();
  await alice.locator('[data-cart-total="250"]').waitFor();
  // Added again: the line holds two.
  await addLantern.click();
  await alice.locator('[data-cart-total="500"]').waitFor();
  const inCart = alice.getByLabel("Quantity of Lantern in the cart");
  check((await inCart.inputValue()) === "2", "the line holds two lanterns");
  await inCart.fill("3");
  await inCart.blur();
  await alice.locator('[data-line-total="E2E-1"]', { hasText: "7.50" }).waitFor();
  await alice.locator('[data-cart-total="750"]').waitFor();
  await inCart.fill("1");
  await inCart.blur();
  await alice.locator('[data-cart-total="250"]').waitFor();

  step = "staff reprice and describe the item: both carts follow the price";
  const edit = alice.locator('form[aria-label="Edit an item"]');
  await edit.getByLabel("SKU").fill("E2E-1");
  await edit.getByLabel("New price (cents)").fill("300");
  await edit.getByLabel("New description").fill("A storm lantern, brass and glass");
  await edit.getByRole("button", { name: "Save changes" }).click();
  await alice.locator('[data-cart-total="300"]').waitFor();
  await alice.getByText("A storm lantern, brass and glass").waitFor();
  await eventually(bob, "#/shop", bob.locator('[data-cart-total="300"]'));
  await shot(bob, "shop-cart-phone");
  await accessible(bob, "the shop with a cart, on a phone");
  await fits(bob, "the shop with a cart");

  step = "Alice checks out with the coupon; the order turns reserved live";
  await alice.getByLabel("Coupon code (optional)").fill("GLOW10");
  await alice.getByRole("button", { name: "Check out" }).click();
  const pill = alice.locator("[data-order-status]").first();
  await pill.waitFor();
  // Not reloaded: the status changes because the WebSocket's order_status says so.
  await alice.waitForFunction(() => document.querySelector("[data-order-status]")?.textContent === "reserved");
  // 10% off 3.00 (the price when she checked out), as the server priced it.
  check((await alice.locator("tr[data-order]").first().textContent()).includes("2.70"), "the coupon's total, 2.70, is shown");
  // The cart is empty, and says so.
  await alice.locator('[data-cart-total="0"]').waitFor();
  check((await alice.locator("[data-cart-line]").count()) === 0, "the cart is empty after checking out");
  await alice.getByText("Your cart is empty.").waitFor();
  await shot(alice, "shop-order-reserved");
  await accessible(alice, "the shop, with the cart and the staff forms");

  step = "the discounted order is paid, another checked out and cancelled, stock received";
  const first = alice.locator("tr[data-order]").first();
  const firstId = await first.getAttribute("data-order");
  await first.getByRole("button", { name: "Pay" }).click();
  await eventually(alice, "#/shop", alice.locator(`[data-order-status="${firstId}"]`, { hasText: "paid" }));
  await alice.getByRole("button", { name: "Add to cart: Lantern" }).click();
  await alice.locator('[data-cart-total="300"]').waitFor();
  await alice.getByRole("button", { name: "Check out" }).click();
  await alice.waitForFunction(() => document.querySelectorAll("tr[data-order]").length === 2);
  const second = alice.locator("tr[data-order]").first();
  const secondId = await second.getAttribute("data-order");
  check(secondId !== firstId, "the new order is listed first");
  await alice.waitForFunction((id) => document.querySelector(`[data-order-status="${id}"]`)?.textContent === "reserved", secondId);
  await second.getByRole("button", { name: "Cancel" }).click();
  await eventually(alice, "#/shop", alice.locator(`[data-order-status="${secondId}"]`, { hasText: "cancelled" }));
  // One lantern paid, one released: four of five available.
  await eventually(alice, "#/shop", alice.locator('[data-available="E2E-1"]', { hasText: "4" }));
  const receive = alice.locator('form[aria-label="Receive stock"]');
  await receive.getByLabel("SKU").fill("E2E-1");
  await receive.getByLabel("Quantity").fill("3");
  await receive.getByRole("button", { name: "Receive stock" }).click();
  await eventually(alice, "#/shop", alice.locator('[data-available="E2E-1"]', { hasText: "7" }));

  step = "a discontinued item stays in the cart, marked, and cannot be checked out";
  await create.getByLabel("SKU").fill("E2E-2");
  await create.getByLabel("Name").fill("Wick");
  await create.getByLabel("Price (cents)").fill("100");
  await create.getByLabel("Initial stock").fill("9");
  await create.getByRole("button", { name: "Create item" }).click();
  await alice.getByRole("button", { name: "Add to cart: Wick" }).click();
  await alice.locator('[data-cart-line="E2E-2"]').waitFor();
  await alice.getByRole("button", { name: "Discontinue Wick" }).click();
  await alice.locator('[data-discontinued="E2E-2"]').waitFor();
  check((await alice.getByRole("button", { name: "Add to cart: Wick" }).count()) === 0, "a discontinued item can still be added");
  await alice.locator('[data-cart-line="E2E-2"]', { hasText: "(discontinued)" }).waitFor();
  await alice.getByRole("button", { name: "Check out" }).click();
  await alice.locator("#status.error", { hasText: "item E2E-2 is discontinued" }).waitFor();
  check((await alice.locator("tr[data-order]").count()) === 2, "no order was placed");
  await alice.getByRole("button", { name: "Remove Wick from the cart" }).click();
  await alice.locator('[data-cart-total="0"]').waitFor();
  // The catalog finds the lantern by its description.
  const search = alice.getByRole("search");
  await search.getByLabel("Search items").fill("brass");
  await search.getByRole("button", { name: "Search" }).click();
  await alice.waitForFunction(() => location.hash === "#/shop?q=brass"
    && document.querySelectorAll("tr[data-item]").length === 1 && document.querySelector('tr[data-item="E2E-1"]'));
  await accessible(alice, "the shop, with a discontinued item");

  step = "signing out and in again";
  await alice.getByRole("button", { name: "Sign out" }).click();
  const signIn = alice.locator('form[aria-label="Sign in"]');
  await signIn.getByLabel("Username").fill("alice");
  await signIn.getByLabel("Password").fill("not her password");
  await signIn.getByRole("button", { name: "Sign in" }).click();
  // This refusal's own line (the checkout's error may still be on screen).
  await alice.locator("#status.error", { hasText: "the username or password is wrong" }).waitFor();
  await signIn.getByLabel("Password").fill("correct horse battery");
  await signIn.getByRole("button", { name: "Sign in" }).click();
  await alice.getByText("Signed in as alice").waitFor();
  // Her orders are still hers.
  await alice.locator(`[data-order-status="${firstId}"]`, { hasText: "paid" }).waitFor();

  step = "two browsers chat live";
  await open(bob, "#/chat");
  const bobId = await bob.evaluate(() => localStorage.getItem("chronicle.user_id"));
  await open(alice, "#/chat");
  const room = alice.locator('form[aria-label="Create a room"]');
  await room.getByLabel("Room name").fill("lanterns");
  // Bob is named by his username; someone who does not exist is refused, and no room is made.
  await room.getByLabel(/Members/).fill("bob, nobody_here");
  await room.getByRole("button", { name: "Create room" }).click();
  await alice.locator("#status", { hasText: "No user is called nobody_here" }).waitFor();
  await room.getByLabel(/Members/).fill("bob");
  await room.getByRole("button", { name: "Create room" }).click();
  await alice.locator("[data-room-view]").waitFor();
  const roomId = await alice.locator("[data-room-view]").getAttribute("data-room-view");
  await eventually(bob, "#/chat", bob.locator(`[data-room="${roomId}"]`));
  await bob.locator(`[data-room="${roomId}"]`).click();
  await bob.locator("[data-room-view]").waitFor();
  await bob.waitForFunction(() => document.body.dataset.live === "open");
  await alice.waitForFunction(() => document.body.dataset.live === "open");
  // Bob's connection is presence: Alice's room shows him online, by his display name.
  await alice.locator(`[data-member="${bobId}"][data-online="yes"]`, { hasText: "Bob" }).waitFor();
  await alice.getByLabel("Message", { exact: true }).fill("hello bob");
  await alice.getByRole("button", { name: "Send" }).click();
  await bob.locator(".messages li", { hasText: "Alice: hello bob" }).waitFor();
  await bob.getByLabel("Message", { exact: true }).pressSequentially("hi al");
  await alice.getByText("Bob is typing").waitFor();
  await bob.getByLabel("Message", { exact: true }).fill("hi alice");
  await bob.getByRole("button", { name: "Send" }).click();
  await alice.locator(".messages li", { hasText: "Bob: hi alice" }).waitFor();
  // Bob's page marked "hello bob" read: Alice sees his receipt.
  await alice.locator(`[data-member="${bobId}"]`, { hasText: "read to #" }).waitFor();
  const order = await alice.locator(".messages li").allTextContents();
  check(order.length === 2 && order[0].includes("hello bob") && order[1].includes("hi alice"), `messages in order: ${order}`);
  await shot(alice, "chat-alice");
  await shot(bob, "chat-bob-phone");
  await accessible(alice, "a chat room");
  await accessible(bob, "a chat room on a phone");
  await fits(bob, "a chat room");

  step = "older messages load as the history is scrolled up";
  await alice.evaluate(async (room) => {
    const token = localStorage.getItem("chronicle.token");
    for (let i = 1; i <= 60; i++) {
      await fetch(`/api/v1/rooms/${room}/messages`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ body: `backlog ${i}`, client_msg_id: `backlog-${i}` }),
      });
    }
  }, roomId);
  await bob.locator(".messages li", { hasText: "backlog 60" }).waitFor();
  await eventually(bob, `#/chat/${roomId}`, bob.locator(".messages li", { hasText: "backlog 60" }));
  check((await bob.locator(".messages li").count()) === 50, "the first page is 50 messages");
  await bob.locator(".messages").evaluate((list) => { list.scrollTop = 0; list.dispatchEvent(new Event("scroll")); });
  await bob.locator(".messages li", { hasText: "hello bob" }).waitFor();
  check((await bob.locator(".messages li").count()) === 62, "every message once after scrolling back");

  step = "an image attached in chat reaches Bob live, with its thumbnail, and downloads";
  const picture = png(200, 120);
  await alice.getByLabel("Attach files").setInputFiles({ name: "glow.png", mimeType: "image/png", buffer: picture });
  await alice.getByLabel("Message", { exact: true }).fill("the lantern at dusk");
  await alice.getByRole("button", { name: "Send" }).click();
  const live = bob.locator(".messages li", { hasText: "the lantern at dusk" });
  await live.locator("[data-attachment]", { hasText: "glow.png" }).waitFor();
  check((await loadedWidth(live.locator("img[data-thumb]"))) === 128, "the thumbnail is 128 pixels wide");
  check(await downloaded(bob, live.getByRole("button", { name: /glow\.png/ })) === sha256(picture), "bob's download differs from the picture");
  // And from the history, after a reload.
  await bob.reload();
  await open(bob, `#/chat/${roomId}`);
  const kept = bob.locator(".messages li", { hasText: "the lantern at dusk" });
  check((await loadedWidth(kept.locator("img[data-thumb]"))) === 128, "the thumbnail is in the history");
  await shot(bob, "chat-attachment-phone");
  await loadedWidth(alice.locator(".messages li", { hasText: "the lantern at dusk" }).locator("img[data-thumb]"));
  await shot(alice, "chat-attachment");
  await accessible(bob, "a message with a picture");
  await fits(bob, "a message with a picture");

  step = "Bob's connection drops; what he missed arrives once, in order, without a reload";
  await bob.waitForFunction(() => document.body.dataset.live === "open");
  await bob.evaluate(() => (window.notReloaded = true));
  const seen = Math.max(...(await bob.locator(".messages li").evaluateAll((items) => items.map((li) => Number(li.dataset.seq)))));
  bobSocket.hold = true;
  await bobSocket.drop();
  // The header says so (a held-back attempt may look open for a moment before it closes).
  await bob.locator("#live", { hasText: "reconnecting" }).waitFor();
  for (const text of ["missed one", "missed two", "missed three"]) {
    // Sent with the keyboard: Enter in the message field.
    await alice.getByLabel("Message", { exact: true }).fill(text);
    await alice.getByLabel("Message", { exact: true }).press("Enter");
    await alice.locator(".messages li", { hasText: text }).waitFor();
  }
  check((await bob.locator(".messages li", { hasText: "missed" }).count()) === 0, "bob got messages while cut off");
  const subscribes = bobSocket.sent.length;
  bobSocket.hold = false;
  await bob.locator(".messages li", { hasText: "missed three" }).waitFor();
  await bob.waitForFunction(() => document.body.dataset.live === "open");
  const resubscribed = bobSocket.sent.slice(subscribes).map((frame) => JSON.parse(frame))
    .find((frame) => frame.type === "subscribe" && frame.room_id === roomId);
  check(resubscribed?.since_seq === seen, `the page resubscribed from seq ${seen}: ${JSON.stringify(resubscribed)}`);
  const seqs = await bob.locator(".messages li").evaluateAll((items) => items.map((li) => Number(li.dataset.seq)));
  check(new Set(seqs).size === seqs.length, "a message is shown twice");
  const missed = await bob.locator(".messages li", { hasText: "missed" }).allTextContents();
  check(missed.length === 3 && missed[0].includes("one") && missed[2].includes("three"), `the missed messages: ${missed}`);
  check(await bob.evaluate(() => window.notReloaded === true), "the page was reloaded");

  step = "a post is written with a live preview, published and found by search";
  // By keyboard: Tab to the section's link, Enter; the focus moves to the new view.
  await tabTo(alice, "Blog");
  await alice.keyboard.press("Enter");
  await alice.waitForFunction(() => document.body.dataset.view === "blog");
  check(await alice.evaluate(() => document.activeElement?.id === "view"), "the focus is not on the new view");
  const write = alice.locator('form[aria-label="Write a post"]');
  await write.getByLabel("Title").fill("Zymurgy by lantern light");
  const markdown = write.getByLabel("Markdown");
  await markdown.pressSequentially("Some **brewing** notes.");
  // Rendered by the server as it is typed, before anything is saved.
  await alice.locator("[data-preview] strong", { hasText: "brewing" }).waitFor();
  await markdown.pressSequentially("\n\n<script>alert(1)</script>\n\n*by* hand");
  await alice.locator("[data-preview] em", { hasText: "by" }).waitFor();
  check((await alice.locator("[data-preview] script").count()) === 0, "the preview carries a script");
  await accessible(alice, "the blog, with a post being written");
  await write.getByLabel(/Tags/).fill("e2e, brewing");
  await write.getByRole("button", { name: "Save draft" }).click();
  await alice.getByRole("button", { name: "Publish" }).click();
  await alice.getByRole("heading", { name: "Zymurgy by lantern light" }).waitFor();
  check((await alice.locator(".post-body script").count()) === 0, "the post carries a script");
  await eventually(bob, "#/blog?q=zymurgy", bob.getByRole("link", { name: "Zymurgy by lantern light" }));
  await bob.getByRole("link", { name: "Zymurgy by lantern light" }).click();
  await bob.locator(".post-body strong", { hasText: "brewing" }).waitFor();
  await shot(bob, "blog-found-phone");
  await accessible(bob, "a post on a phone");
  await fits(bob, "a post");

  step = "a comment on the post";
  const comment = bob.locator('form[aria-label="Comment"]');
  await comment.getByLabel("Your comment").fill("Lovely light");
  await comment.getByRole("button", { name: "Comment" }).click();
  await bob.locator('[aria-label="Comments"] li', { hasText: "Lovely light" }).waitFor();
  const postUrl = bob.url().slice(base.length + 1);
  await eventually(alice, postUrl, alice.locator('[aria-label="Comments"] li', { hasText: "Lovely light" }));

  step = "a file upload is interrupted by a reload and resumed";
  const bytes = Buffer.alloc(3 * 1024 * 1024);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7919) % 251;
  const file = { name: "lantern.bin", mimeType: "application/octet-stream", buffer: bytes };
  // Each PATCH is held back, so the reload lands mid-upload.
  await alice.route("**/api/v1/files/tus/*", async (route) => {
    if (route.request().method() === "PATCH") await new Promise((r) => setTimeout(r, 250));
    // The reload cancels the request held back: it is gone by then.
    await route.continue().catch(() => {});
  });
  await open(alice, "#/files");
  await alice.getByLabel("File to upload").setInputFiles(file);
  await alice.getByRole("button", { name: "Upload", exact: true }).click();
  await alice.waitForFunction(() => {
    const bar = document.querySelector("progress");
    return bar && bar.value >= 0.25 && bar.value < 1;
  });
  await alice.reload();
  await alice.unroute("**/api/v1/files/tus/*");
  await alice.getByLabel("File to upload").setInputFiles(file);
  await alice.getByRole("button", { name: "Upload", exact: true }).click();
  const resumed = await alice.getByText(/Resuming from \d+ of/).textContent();
  const from = Number(resumed.match(/from (\d+)/)[1]);
  check(from > 0 && from < bytes.length, `resumed from ${from}`);
  await alice.locator("#status", { hasText: "Uploaded lantern.bin" }).waitFor();
  await eventually(alice, "#/files", alice.locator("tr", { hasText: "lantern.bin" }));
  const fileId = await alice.locator("tr", { hasText: "lantern.bin" }).getAttribute("data-file");
  check(await downloaded(alice, alice.locator(`tr[data-file="${fileId}"]`).getByRole("button", { name: "Download" })) === sha256(bytes),
    "the downloaded bytes differ from the file's");
  // The picture sent in chat is Alice's file too, listed with its thumbnail.
  check((await loadedWidth(alice.locator("tr", { hasText: "glow.png" }).locator("img[data-thumb]"))) === 128, "the files list shows the thumbnail");
  // The 200x120 picture, in the pictures grid as a 128-pixel square cropped around its centre.
  const square = await loadedSize(alice.getByRole("list", { name: "Your pictures" }).getByRole("img", { name: "glow.png" }));
  check(square[0] === 128 && square[1] === 128, `the grid's square is ${square}`);
  await shot(alice, "files-resumed");
  await accessible(alice, "the files");

  step = "a share link serves the file without an account";
  await alice.locator(`tr[data-file="${fileId}"]`).getByRole("button", { name: "Share" }).click();
  const shareUrl = await alice.locator(`tr[data-file="${fileId}"]`).getByRole("link", { name: /share link/ }).getAttribute("href");
  const shared = await fetch(new URL(shareUrl, base));
  check(shared.status === 200, `the share link answered ${shared.status}`);
  check(sha256(Buffer.from(await shared.arrayBuffer())) === sha256(bytes), "the shared bytes differ");

  step = "operations: readers, live throughput, a job's runs";
  const job = await alice.evaluate(async () => {
    const answer = await fetch("/api/v1/jobs", {
      method: "POST",
      headers: { authorization: `Bearer ${localStorage.getItem("chronicle.token")}`, "content-type": "application/json" },
      body: JSON.stringify({ name: "lantern-check", schedule: { after_seconds: 1 }, action: { kind: "command", command: "noop" } }),
    });
    return answer.status;
  });
  check(job === 201, `scheduling the job answered ${job}`);
  await open(alice, "#/ops");
  await alice.locator('[data-reader="orders"]').waitFor();
  // Two refreshes apart, the rate of events into the log is shown.
  await alice.getByText(/\d+\.\d events\/s into the log/).waitFor();
  const jobRow = alice.locator("li", { hasText: "lantern-check" });
  // The jobs read model may list it a moment after the 201.
  await eventually(alice, "#/ops", jobRow);
  for (const deadline = Date.now() + 20_000; ;) {
    await jobRow.getByRole("button", { name: "Runs" }).click();
    if (await jobRow.getByRole("list").getByText(/succeeded/).count()) break;
    check(Date.now() < deadline, "the job never ran");
    await alice.waitForTimeout(500);
  }

  step = "operations: a job run by an event shows the event it ran for";
  const made = await alice.evaluate(async () => {
    const headers = { authorization: `Bearer ${localStorage.getItem("chronicle.token")}`, "content-type": "application/json" };
    const answer = await fetch("/api/v1/jobs", {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "on-restock", schedule: { on_event: { types: ["StockReceived"], context: "commerce" } },
        action: { kind: "command", command: "noop" } }),
    });
    if (answer.status !== 201) return answer.status;
    const { id } = await answer.json();
    // In the log before the event it is to run for.
    for (let i = 0; i < 100; i++) {
      if ((await fetch(`/api/v1/jobs/${id}?min_version=1`, { headers })).ok) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const received = await fetch("/api/v1/inventory/items/E2E-1/receive", { method: "POST", headers, body: JSON.stringify({ quantity: 1 }) });
    return received.status === 200 ? 201 : received.status;
  });
  check(made === 201, `the event-triggered job or its event answered ${made}`);
  const eventRow = alice.locator("li", { hasText: "on-restock" });
  await eventually(alice, "#/ops", eventRow);
  check((await eventRow.textContent()).includes("on StockReceived (commerce)"), "the job says what it runs on");
  for (const deadline = Date.now() + 20_000; ;) {
    await eventRow.getByRole("button", { name: "Runs" }).click();
    if (await eventRow.getByRole("list").getByText(/succeeded for StockReceived E2E-1/).count()) break;
    check(Date.now() < deadline, "the event-triggered job never ran");
    await alice.waitForTimeout(500);
  }
  await shot(alice, "operations");
  await accessible(alice, "operations");
}

/** Staff retry the events a reader parked, once the cause is gone (the Rust test parked one
 * of `reader`'s events, then removed the cause): the button applies it, and the count drops. */
async function retry(reader) {
  const carol = await person("carol");
  await open(carol, "#/ops");
  const row = carol.locator(`[data-reader="${reader}"]`);
  await row.locator("[data-parked]:not([data-parked='0'])").waitFor();
  const parked = Number(await row.locator("[data-parked]").getAttribute("data-parked"));
  // Why: the event and the error the reader gave, the constraint's name in it.
  await row.getByRole("button", { name: "Why parked?" }).click();
  await carol.getByRole("list", { name: `Parked by ${reader}` }).getByText(/console_e2e_blocks/).waitFor();
  await shot(carol, "operations-parked");
  await accessible(carol, "operations, with a parked event");
  await row.getByRole("button", { name: "Retry parked" }).click();
  await carol.locator("#status", { hasText: `Retried: ${parked} applied, 0 still parked` }).waitFor();
  // The next refresh shows none parked, and the button is gone.
  await row.locator("[data-parked='0']").waitFor();
  check((await row.getByRole("button", { name: "Retry parked" }).count()) === 0, "the retry button stays");
}

/** A call to the API from `page`, as its signed-in user: `[status, body]`. */
async function call(page, method, path, body) {
  return page.evaluate(async ([method, path, body]) => {
    const headers = { authorization: `Bearer ${localStorage.getItem("chronicle.token")}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const answer = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await answer.text();
    return [answer.status, text ? JSON.parse(text) : null];
  }, [method, path, body]);
}

/** Every chart of the view drawn (not loading); each asks at most a few hundred points. */
async function chartsOf(page) {
  await page.waitForFunction(() => document.querySelectorAll("figure.chart").length > 0
    && [...document.querySelectorAll("figure.chart")].every((f) => f.dataset.state !== "loading"));
  const charts = await page.locator("figure.chart").evaluateAll((all) => all.map((figure) => ({
    title: figure.dataset.chart,
    state: figure.dataset.state,
    query: figure.dataset.query,
    canvas: Boolean(figure.querySelector("canvas")),
    nodata: figure.querySelector(".nodata")?.hidden === false ? figure.querySelector(".nodata").textContent : null,
    series: JSON.parse(figure.dataset.series || "[]"),
    rows: [...figure.querySelectorAll("details tbody tr")].map((tr) => ({
      at: Number(tr.dataset.at),
      series: tr.dataset.series,
      value: Number(tr.querySelector("td[data-value]").dataset.value),
    })),
  })));
  for (const chart of charts) {
    const q = new URLSearchParams(chart.query.split("?")[1]);
    const points = (Number(q.get("to")) - Number(q.get("from"))) / Number.parseInt(q.get("step"), 10);
    check(points <= 400, `${chart.title} asks for ${points} points per series`);
  }
  return charts;
}

/** What `chart` shows is what its query answers: every value in its table is a point the API
 * gives at that time (the bucket of now, still filling, left out), and a chart with data
 * draws a canvas while an empty one says "No data". How many values were compared. */
async function holdsItsQuery(page, chart) {
  const [status, answer] = await call(page, "GET", chart.query);
  check(status === 200, `${chart.title}: its query answered ${status}`);
  const points = answer.series.flatMap((s) => s.points);
  if (!points.length) {
    check(chart.state === "empty" && !chart.canvas && /^No data in the last/.test(chart.nodata ?? ""), `${chart.title} has no data but does not say so`);
    return;
  }
  check(chart.state === "data" && chart.canvas, `${chart.title} has data but draws none`);
  const q = new URLSearchParams(chart.query.split("?")[1]);
  const filling = Number(q.get("to")) - Number.parseInt(q.get("step"), 10);
  let compared = 0;
  for (const row of chart.rows.filter((r) => r.at < filling)) {
    check(points.some(([at, v]) => at === row.at && Math.abs(v - row.value) < 1e-9), `${chart.title} shows ${row.value} for ${row.series} at ${row.at}, which its query does not answer`);
    compared++;
  }
  return compared;
}

/** The monitoring view (issue 33): dashboards hold what their queries answer, explore shows
 * reported samples from a shared URL and refreshes in place, a rule made in the console
 * fires on a reported value, shows in the header on every view and is acknowledged from the
 * list; every view passes axe at desktop and phone width. */
async function monitoring() {
  const erin = await person(process.env.E2E_SUFFIX ? `erin${process.env.E2E_SUFFIX}` : "erin");
  erin.on("dialog", (dialog) => dialog.accept());
  const phone = await person(process.env.E2E_SUFFIX ? `frank${process.env.E2E_SUFFIX}` : "frank", { width: 390, height: 844 });

  step = "reporting samples";
  // The lab's name is the run's own when the scenario is run again on one system.
  const room = `lab${process.env.E2E_SUFFIX ?? ""}`;
  const now = Math.floor(Date.now() / 1000);
  const temperature = (room, value, at) => ({ metric: "e2e_room_temperature", labels: { room }, value, at });
  // Three minutes of the lab, 20 s apart (each in a bucket of its own at the 10 s step of
  // 15 min), and a hall the label filter leaves out.
  const lab = [[now - 120, 21.5], [now - 100, 22.25], [now - 80, 23.5]];
  const [reported] = await call(erin, "POST", "/api/v1/monitoring/samples",
    [...lab.map(([at, v]) => temperature(room, v, at)), temperature("hall", 18, now - 100)]);
  check(reported === 202, `reporting answered ${reported}`);

  step = "the dashboards hold what their queries answer";
  for (const [board, expected] of [
    ["system", { data: ["CPU", "Memory", "Disk", "Network"] }],
    ["application", { data: ["Requests per second by route", "p99 latency by route", "Commands per second by outcome", "Subscriber lag (events)", "Parked events"] }],
    // The shop, chat and files scenarios placed orders, sent messages and uploaded bytes;
    // no job run failed and no cart was abandoned.
    ["business", { data: ["Orders placed", "Revenue", "Messages sent", "Bytes uploaded", "Carts checked out"], empty: ["Failed job runs", "Carts abandoned"] }],
  ]) {
    await open(erin, `#/monitoring/${board}`);
    const charts = await chartsOf(erin);
    let compared = 0;
    for (const chart of charts) compared += (await holdsItsQuery(erin, chart)) ?? 0;
    for (const title of expected.data) {
      const chart = charts.find((c) => c.title === title);
      check(chart?.state === "data", `the ${board} dashboard's ${title} has no data: ${JSON.stringify(chart)}`);
    }
    for (const title of expected.empty ?? []) {
      const chart = charts.find((c) => c.title === title);
      check(chart?.state === "empty", `the ${board} dashboard's ${title} is not empty`);
    }
    // The host and request series are collected every 10 s: the past buckets have them.
    if (board !== "business") check(compared > 0, `no value of the ${board} dashboard was compared with its query`);
    if (board === "system") {
      // Per host: the collecting gateway names itself.
      const cpu = charts.find((c) => c.title === "CPU");
      check(cpu.series.length >= 1 && cpu.series.every((s) => s.length > 0), `CPU names no host: ${cpu.series}`);
    }
    if (board === "business") {
      // Every order of the scenarios, in the minutes the chart shows: its sum is the range's.
      const orders = charts.find((c) => c.title === "Orders placed");
      const q = new URLSearchParams(orders.query.split("?")[1]);
      const span = Number(q.get("to")) - Number(q.get("from"));
      const [, total] = await call(erin, "GET", `/api/v1/monitoring/query?metric=business_orders_placed&from=${q.get("from")}&to=${q.get("to")}&step=${span}s&agg=sum`);
      const placed = orders.rows.reduce((sum, row) => sum + row.value, 0);
      check(placed > 0 && placed === total.series[0]?.points[0]?.[1], `the dashboard counts ${placed} orders, the range holds ${JSON.stringify(total)}`);
    }
    await shot(erin, `monitoring-${board}`);
    await accessible(erin, `the ${board} dashboard`);
  }

  step = "the long ranges ask for few points, at steps the per-minute rollups answer";
  for (const [range, seconds] of [["24h", 300], ["7d", 1800]]) {
    await open(erin, `#/monitoring/system?range=${range}`);
    const charts = await chartsOf(erin);
    const cpu = charts.find((c) => c.title === "CPU");
    check(cpu.state === "data" && cpu.query.includes(`step=${seconds}s`), `CPU over ${range}: ${JSON.stringify(cpu)}`);
    check(await erin.locator("select[name=range]").inputValue() === range, `the range picker does not show ${range}`);
  }

  step = "explore from a shared URL";
  const shared = `#/monitoring/explore?metric=e2e_room_temperature&labels=room%3A${room}&agg=max&range=15m`;
  await open(erin, shared);
  let [chart] = await chartsOf(erin);
  check(chart.state === "data", `explore shows no data: ${JSON.stringify(chart)}`);
  check(chart.series.length === 1 && chart.series[0] === room, `explore draws ${chart.series}, not the lab alone`);
  // The chart's buckets start at multiples of its 10 s step.
  const shown = new Map(chart.rows.map((r) => [r.at, r.value]));
  for (const [at, value] of lab) {
    const bucket = Math.floor(at / 10) * 10;
    check(shown.get(bucket) === value, `explore shows ${shown.get(bucket)} at ${bucket}, ${value} was reported at ${at}`);
  }
  check(await erin.getByLabel("Label room").inputValue() === room, "the label filter is not in the form");

  step = "explore refreshes in place";
  const canvas = await erin.locator("figure.chart canvas").elementHandle();
  await call(erin, "POST", "/api/v1/monitoring/samples", [temperature(room, 24.75, Math.floor(Date.now() / 1000))]);
  // In the table (folded away under "Latest values": there, not shown).
  await erin.locator('figure.chart td[data-value="24.75"]').waitFor({ state: "attached", timeout: 20_000 });
  check(await canvas.evaluate((node) => node.isConnected), "the chart was drawn anew, not refreshed");

  step = "explore's form keeps the query in the URL";
  await erin.getByLabel("Aggregation").selectOption("min");
  await erin.getByLabel("Range").selectOption("1h");
  await erin.getByRole("button", { name: "Show" }).click();
  await erin.waitForFunction(() => location.hash.includes("agg=min") && location.hash.includes("range=1h") && location.hash.includes("room%3A"));
  const url = erin.url();
  await erin.reload();
  await open(erin, url.slice(url.indexOf("#")));
  [chart] = await chartsOf(erin);
  check(chart.title === `min of e2e_room_temperature {room:${room}}` && chart.query.includes("agg=min") && chart.query.includes("step=15s"),
    `the reloaded URL shows ${chart.title} (${chart.query})`);
  await shot(erin, "monitoring-explore");
  await accessible(erin, "explore");

  step = "a rule made in the console, refused first with the API's own message";
  await open(erin, "#/monitoring/rules");
  const form = erin.locator('form[aria-label="Create a rule"]');
  await form.getByLabel("Name").fill("Lab too hot");
  await form.getByLabel("Metric").fill("e2e_room_temperature");
  await form.getByLabel("Labels (k:v, comma separated)").fill(`room:${room}`);
  await form.getByLabel("Aggregation").selectOption("max");
  await form.getByLabel("Window (s)").fill("1");
  await form.getByLabel("Threshold").fill("40");
  await form.getByLabel("Severity").selectOption("critical");
  await form.getByRole("button", { name: "Create rule" }).click();
  const refused = form.locator('[data-error-field="window_seconds"]');
  await refused.waitFor();
  const [apiStatus, apiProblem] = await call(erin, "POST", "/api/v1/monitoring/rules",
    { name: "Lab too hot", metric: "e2e_room_temperature", labels: { room }, agg: "max", window_seconds: 1, op: ">", threshold: 40, for_seconds: 0, severity: "critical", channels: [] });
  const apiMessage = apiProblem.errors?.find((e) => e.field === "window_seconds")?.message;
  check(apiStatus === 422 && (await refused.textContent()) === `window_seconds: ${apiMessage}`, `the form says "${await refused.textContent()}", the API ${apiStatus} "${apiMessage}"`);
  await accessible(erin, "the rules, with a refusal");
  // A label without its colon is named, not dropped (the rule would watch every room).
  await form.getByLabel("Window (s)").fill("60");
  await form.getByLabel("Labels (k:v, comma separated)").fill(room);
  await form.getByRole("button", { name: "Create rule" }).click();
  await form.locator('[data-error-field="labels"]', { hasText: "k:v pairs" }).waitFor();
  await form.getByLabel("Labels (k:v, comma separated)").fill(`room:${room}`);
  await form.getByRole("button", { name: "Create rule" }).click();
  const row = erin.locator("tr", { hasText: "Lab too hot" });
  await row.waitFor();
  check((await row.textContent()).includes("> 40"), `the rule reads ${await row.textContent()}`);

  step = "the rule is edited: its threshold lowered";
  await row.getByRole("link", { name: "Edit Lab too hot" }).click();
  const edit = erin.locator('form[aria-label="Edit rule Lab too hot"]');
  check(await edit.getByLabel("Labels (k:v, comma separated)").inputValue() === `room:${room}`, "the edit form lost the labels");
  await edit.getByLabel("Threshold").fill("30");
  await edit.getByRole("button", { name: "Save rule" }).click();
  await erin.locator("tr", { hasText: "Lab too hot" }).filter({ hasText: "> 30" }).waitFor();
  await shot(erin, "monitoring-rules");
  await accessible(erin, "the rules");

  step = "a value over the rule fires an alert, shown in the header on every view";
  await call(erin, "POST", "/api/v1/monitoring/samples", [temperature(room, 35, Math.floor(Date.now() / 1000))]);
  await open(erin, "#/shop");
  const badge = erin.locator("#alerts-badge");
  await erin.waitForFunction(async () => {
    const headers = { authorization: `Bearer ${localStorage.getItem("chronicle.token")}` };
    const firing = await (await fetch("/api/v1/monitoring/alerts?state=firing", { headers })).json();
    return firing.some((a) => a.rule_name === "Lab too hot");
  }, null, { timeout: 40_000, polling: 1000 });
  await erin.waitForFunction(() => Number(document.getElementById("alerts-badge").dataset.firing) > 0
    && !document.getElementById("alerts-badge").hidden, null, { timeout: 15_000 });
  check(/\d+ alerts? firing/.test(await badge.textContent()), `the badge says ${await badge.textContent()}`);
  await badge.click();
  await erin.waitForFunction(() => document.body.dataset.view === "monitoring");
  const firingRow = erin.locator('[data-alert-state="firing"] tr', { hasText: "Lab too hot" });
  await firingRow.waitFor();
  check((await firingRow.locator("td[data-value]").getAttribute("data-value")) === "35", `the alert's value is ${await firingRow.textContent()}`);
  check((await firingRow.textContent()).includes("(critical)"), "the alert does not say its severity");
  await shot(erin, "monitoring-alerts");
  await accessible(erin, "the alerts");

  step = "the alert is acknowledged from the list";
  await firingRow.getByRole("button", { name: "Acknowledge Lab too hot" }).click();
  await erin.locator('[data-alert-state="acknowledged"] tr', { hasText: "Lab too hot" }).waitFor();
  check(await erin.locator('[data-alert-state="firing"] tr', { hasText: "Lab too hot" }).count() === 0, "the alert still fires");
  // The badge counts what fires now (another rule may fire meanwhile: asked each time).
  await erin.waitForFunction(async () => {
    const headers = { authorization: `Bearer ${localStorage.getItem("chronicle.token")}` };
    const firing = await (await fetch("/api/v1/monitoring/alerts?state=firing", { headers })).json();
    return document.getElementById("alerts-badge").dataset.firing === String(firing.length);
  }, null, { polling: 1000 });

  step = "on a phone, every monitoring view fits and passes axe";
  for (const tab of ["system", "application", "business", "explore", "alerts", "rules"]) {
    await open(phone, `#/monitoring/${tab}`);
    if (!["alerts", "rules"].includes(tab)) await chartsOf(phone);
    await fits(phone, `monitoring ${tab} on a phone`);
    await accessible(phone, `monitoring ${tab} on a phone`);
  }
  await shot(phone, "monitoring-phone");

  step = "the rule is deleted from the list";
  await open(erin, "#/monitoring/rules");
  await erin.getByRole("button", { name: "Delete Lab too hot" }).click();
  await erin.locator("#status", { hasText: "Rule Lab too hot deleted" }).waitFor();
  check(await erin.locator("tr", { hasText: "Lab too hot" }).count() === 0, "the deleted rule is listed");
}

try {
  if (scenario === "retry") await retry(...extra);
  else if (scenario === "monitoring") await monitoring();
  else await main();
  check(pageErrors.length === 0, `errors in the pages: ${pageErrors.join("; ")}`);
  console.log(`console e2e (${scenario}) passed; screenshots in ${artifacts}`);
} catch (error) {
  console.error(`console e2e failed at "${step}": ${error.stack || error}`);
  if (pageErrors.length) console.error(`page errors: ${pageErrors.join("; ")}`);
  for (const [name, page] of pages) {
    const status = await page.locator("#status").textContent().catch(() => "?");
    console.error(`${name} at ${page.url()}: status line "${status}"`);
    await page.screenshot({ path: `${artifacts}/failed-${name}.png`, fullPage: true }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
