// The web console in real headless Chromium (Debian's `chromium`, driven by playwright-core):
// an order seen turning `reserved` live, two browsers chatting live, a post published and
// found by search, a file upload interrupted by a reload and resumed.
//
// node e2e.mjs <base URL> <artifacts dir>: screenshots go to the artifacts dir; any failed
// check, or any error in a page, exits non-zero.

import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const [base, artifacts] = process.argv.slice(2);
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

/** A browser of its own, signed up as `name`. */
async function person(name, viewport = { width: 1200, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(`${name}: ${error.message}`));
  page.setDefaultTimeout(20_000);
  pages.set(name, page);
  await page.goto(`${base}/`);
  const signUp = page.locator('form[aria-label="Sign up"]');
  await signUp.getByLabel("Username").fill(name);
  await signUp.getByLabel("Display name").fill(name);
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
  await page.waitForFunction((name) => document.body.dataset.view === name, viewOf(hash));
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

try {
  const alice = await person("alice");
  // Bob is on a phone-sized screen.
  const bob = await person("bob", { width: 390, height: 844 });

  step = "an order turns reserved live";
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
  await eventually(alice, "#/shop", alice.getByRole("cell", { name: "Lantern" }));
  await alice.getByRole("row", { name: /Lantern/ }).getByRole("button", { name: "Order" }).click();
  const pill = alice.locator("[data-order-status]").first();
  await pill.waitFor();
  // Not reloaded: the status changes because the WebSocket's order_status says so.
  await alice.waitForFunction(() => document.querySelector("[data-order-status]")?.textContent === "reserved");
  await shot(alice, "shop-order-reserved");

  step = "an order is paid, another cancelled";
  const first = alice.locator("tr[data-order]").first();
  const firstId = await first.getAttribute("data-order");
  await first.getByRole("button", { name: "Pay" }).click();
  await eventually(alice, "#/shop", alice.locator(`[data-order-status="${firstId}"]`, { hasText: "paid" }));
  await alice.getByRole("row", { name: /Lantern/ }).getByRole("button", { name: "Order" }).click();
  await alice.waitForFunction(() => document.querySelectorAll("tr[data-order]").length === 2);
  const second = alice.locator("tr[data-order]").first();
  const secondId = await second.getAttribute("data-order");
  check(secondId !== firstId, "the new order is listed first");
  await alice.waitForFunction((id) => document.querySelector(`[data-order-status="${id}"]`)?.textContent === "reserved", secondId);
  await second.getByRole("button", { name: "Cancel" }).click();
  await eventually(alice, "#/shop", alice.locator(`[data-order-status="${secondId}"]`, { hasText: "cancelled" }));
  // One lantern paid, one released: four of five available.
  await eventually(alice, "#/shop", alice.locator('[data-available="E2E-1"]', { hasText: "4" }));

  step = "two browsers chat live";
  await open(bob, "#/chat");
  const bobId = (await bob.locator("#my-id").textContent()).trim();
  check(bobId.length > 10, `bob's id: ${bobId}`);
  await open(alice, "#/chat");
  const room = alice.locator('form[aria-label="Create a room"]');
  await room.getByLabel("Room name").fill("lanterns");
  await room.getByLabel(/Members/).fill(bobId);
  await room.getByRole("button", { name: "Create room" }).click();
  await alice.locator("[data-room-view]").waitFor();
  const roomId = await alice.locator("[data-room-view]").getAttribute("data-room-view");
  await eventually(bob, "#/chat", bob.locator(`[data-room="${roomId}"]`));
  await bob.locator(`[data-room="${roomId}"]`).click();
  await bob.locator("[data-room-view]").waitFor();
  await bob.waitForFunction(() => document.body.dataset.live === "open");
  await alice.waitForFunction(() => document.body.dataset.live === "open");
  // Bob's connection is presence: Alice's room shows him online.
  await alice.locator(`[data-member="${bobId}"][data-online="yes"]`).waitFor();
  await alice.getByLabel("Message", { exact: true }).fill("hello bob");
  await alice.getByRole("button", { name: "Send" }).click();
  await bob.locator(".messages li", { hasText: "hello bob" }).waitFor();
  await bob.getByLabel("Message", { exact: true }).pressSequentially("hi al");
  await alice.getByText(/is typing/).waitFor();
  await bob.getByLabel("Message", { exact: true }).fill("hi alice");
  await bob.getByRole("button", { name: "Send" }).click();
  await alice.locator(".messages li", { hasText: "hi alice" }).waitFor();
  // Bob's page marked "hello bob" read: Alice sees his receipt.
  await alice.locator(`[data-member="${bobId}"]`, { hasText: "read to #" }).waitFor();
  const order = await alice.locator(".messages li").allTextContents();
  check(order.length === 2 && order[0].includes("hello bob") && order[1].includes("hi alice"), `messages in order: ${order}`);
  await shot(alice, "chat-alice");
  await shot(bob, "chat-bob-phone");

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

  step = "a post is published and found by search";
  await open(alice, "#/blog");
  const write = alice.locator('form[aria-label="Write a post"]');
  await write.getByLabel("Title").fill("Zymurgy by lantern light");
  await write.getByLabel("Markdown").fill("Some **brewing** notes.\n\n<script>alert(1)</script>");
  await write.getByLabel(/Tags/).fill("e2e, brewing");
  await write.getByRole("button", { name: /Save draft/ }).click();
  await alice.locator(".post-body strong", { hasText: "brewing" }).waitFor();
  check((await alice.locator(".post-body script").count()) === 0, "the preview carries a script");
  await alice.getByRole("button", { name: "Publish" }).click();
  await alice.getByRole("heading", { name: "Zymurgy by lantern light" }).waitFor();
  await eventually(bob, "#/blog?q=zymurgy", bob.getByRole("link", { name: "Zymurgy by lantern light" }));
  await bob.getByRole("link", { name: "Zymurgy by lantern light" }).click();
  await bob.locator(".post-body strong", { hasText: "brewing" }).waitFor();
  await shot(bob, "blog-found-phone");

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
  const digest = await alice.evaluate(async (id) => {
    const answer = await fetch(`/api/v1/files/${id}/content`, {
      headers: { authorization: `Bearer ${localStorage.getItem("chronicle.token")}` },
    });
    const hash = await crypto.subtle.digest("SHA-256", await answer.arrayBuffer());
    return [...new Uint8Array(hash)].map((b) => b.toString(16).padStart(2, "0")).join("");
  }, fileId);
  check(digest === createHash("sha256").update(bytes).digest("hex"), "the stored bytes differ from the file's");
  await shot(alice, "files-resumed");

  step = "a share link serves the file without an account";
  await alice.locator(`tr[data-file="${fileId}"]`).getByRole("button", { name: "Share" }).click();
  const shareUrl = await alice.locator(`tr[data-file="${fileId}"]`).getByRole("link", { name: /share link/ }).getAttribute("href");
  const shared = await fetch(new URL(shareUrl, base));
  check(shared.status === 200, `the share link answered ${shared.status}`);
  const sharedBytes = Buffer.from(await shared.arrayBuffer());
  check(createHash("sha256").update(sharedBytes).digest("hex") === createHash("sha256").update(bytes).digest("hex"), "the shared bytes differ");

  step = "operations";
  await open(alice, "#/ops");
  await alice.locator('[data-reader="orders"]').waitFor();
  await shot(alice, "operations");

  check(pageErrors.length === 0, `errors in the pages: ${pageErrors.join("; ")}`);
  console.log(`console e2e: 9 scenarios passed; screenshots in ${artifacts}`);
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
