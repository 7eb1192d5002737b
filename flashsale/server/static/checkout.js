/* flashsale checkout page: tokenize with Stripe.js (or the simulator's look-alike), post the token
 * to /charges, and wait for the result in the customer's private Socket.IO room. The server pushes
 * the result and replays stored results on every (re)join. A push can still be lost while the
 * socket stays up (the server's Redis pub/sub listener was reconnecting): so a page still without
 * its result 5 s after the order was accepted asks GET /orders/<id>, every 5 s for two minutes
 * at most, like loadgen's customers. The customer id, room
 * token and payment in progress live in sessionStorage (this tab only, never in a URL or cookie),
 * so a reload rejoins the same room and shows the same payment instead of starting another.
 * With the waiting room on, the page first waits in line (position and ETA pushed at least every
 * 5 s), then shows the card form when admitted; the admission token goes with the order. A reload
 * keeps the stored customer, so the same place in line.
 */
(function () {
  "use strict";

  var STORE_KEY = "flashsale.checkout.v1";
  var LOW_STOCK = 10;
  // Stripe amounts are in minor units except for these currencies (docs.stripe.com/currencies).
  var ZERO_DECIMAL = ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
    "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];

  function byId(id) { return document.getElementById(id); }

  var embedded = JSON.parse(byId("flashsale-session").textContent);
  var sale = embedded.sale;
  // "intents": the card becomes a PaymentMethod the worker pays with a PaymentIntent; else a
  // token for the Charges API (the server's --payments).
  var intents = embedded.payments === "intents";
  var root = byId("checkout");
  var form = byId("checkout-form");
  var pay = byId("pay");
  var payLabel = byId("pay-label");
  var quantity = byId("quantity");
  var statusBox = byId("status");
  var cardErrors = byId("card-errors");
  var connection = byId("connection");
  var stockBox = byId("stock");
  var stockText = byId("stock-text");

  // --- this tab's identity and payment in progress -------------------------------------------

  function readStore() {
    try {
      return JSON.parse(window.sessionStorage.getItem(STORE_KEY) || "null");
    } catch (ignored) {
      return null;
    }
  }

  function writeStore() {
    try {
      window.sessionStorage.setItem(STORE_KEY, JSON.stringify(tab));
    } catch (ignored) { /* private mode: the page still works, a reload just starts afresh */ }
  }

  function freshTab(identity) {
    return {
      sku: sale.sku,
      customer_id: identity.customer_id,
      room_token: identity.room_token,
      admission: null,  // the waiting room's admission token, once admitted
      order_id: null,   // the latest order this tab placed
      inflight: null,   // {token, quantity} posted (or about to be) but not yet answered
      result: null      // the latest order's final charge_result
    };
  }

  // A stored identity wins over the one this page was rendered with: same customer, same room.
  // Not once its turn passed: then a reload is a new place in line, the rendered identity's.
  var saved = readStore();
  var tab = saved && saved.sku === sale.sku && saved.customer_id && saved.room_token &&
    !saved.lapsed ? saved : freshTab(embedded);
  writeStore();

  // The look-up of a result the socket should have brought (see the top of this file).
  var RESULT_CHECK_MS = 5000;
  var RESULT_CHECKS = 24;
  var resultCheck = null;

  var stockLeft = sale.stock_left;
  // With a waiting room, units held for admitted customers are not in stock_left: stock alone
  // never says sold out, the room's sold_out event does.
  var room = embedded.waiting_room || null;
  var roomOver = !!room && room.status === "sold_out";  // the room said every unit is sold
  // queued | lapsed | ready | tokenizing | sending | pending | paid | declined | failed |
  // sold-out | broken
  var phase = room && !tab.admission ? "queued" : "ready";
  // The client-side in-flight guard: one payment at a time, whatever fires the submit event.
  var submitting = false;
  var actions = {};        // action_required payloads by order id (3D Secure)
  var authenticating = {};  // orders whose challenge is on screen or answered
  var results = {};  // charge_result by order id; one may arrive before /charges answers

  // --- presentation ---------------------------------------------------------------------------

  function money(minorUnits) {
    var currency = sale.currency.toLowerCase();
    var value = ZERO_DECIMAL.indexOf(currency) >= 0 ? minorUnits : minorUnits / 100;
    try {
      return new Intl.NumberFormat(document.documentElement.lang || "en",
        { style: "currency", currency: currency.toUpperCase() }).format(value);
    } catch (ignored) {
      return value + " " + currency.toUpperCase();
    }
  }

  function span(className, text) {
    var node = document.createElement("span");
    node.className = className;
    node.textContent = text;
    return node;
  }

  function setStatus(state, title, detail, chargeId) {
    statusBox.setAttribute("data-state", state);
    root.setAttribute("data-state", state);
    statusBox.textContent = "";
    if (state === "ready") return;
    if (state === "pending") statusBox.appendChild(span("spinner", ""));
    var text = document.createElement("span");
    text.appendChild(span("status-title", title));
    var more = span("status-detail", detail || "");
    if (chargeId) {
      var code = document.createElement("code");
      code.id = "charge-id";
      code.textContent = chargeId;
      more.appendChild(code);
    }
    text.appendChild(more);
    statusBox.appendChild(text);
  }

  function busy() {
    return phase === "tokenizing" || phase === "sending" || phase === "pending";
  }

  function refreshButton() {
    var total = money(sale.amount * (parseInt(quantity.value, 10) || 1));
    var label = "Pay " + total;
    var disabled = false;
    if (busy()) {
      label = phase === "tokenizing" ? "Securing your card…" : "Payment pending…";
      disabled = true;
    } else if (phase === "paid") {
      label = "Paid";
      disabled = true;
    } else if (phase === "broken") {
      label = "Unavailable";
      disabled = true;
    } else if (phase === "queued") {
      label = "Waiting in line…";
      disabled = true;
    } else if (phase === "lapsed") {
      label = "Your turn has passed";
      disabled = true;
    } else if (phase === "sold-out" || (!room && stockLeft <= 0)) {
      label = "Sold out";
      disabled = true;
    } else if (phase === "failed") {
      label = "Try again · " + total;
    }
    pay.disabled = disabled;
    pay.setAttribute("aria-busy", busy() ? "true" : "false");
    // A waiting room holds one unit per customer.
    quantity.disabled = !!room || busy() || phase === "paid";
    payLabel.textContent = label;
  }

  function announceFinal() {
    // Final states move focus to the message, so keyboard and screen reader users land on it.
    statusBox.setAttribute("tabindex", "-1");
    statusBox.focus();
  }

  function showSoldOut(wasAsking) {
    phase = "sold-out";
    setStatus("sold-out", "Sold out", wasAsking
      ? "The last unit went while you were paying. You were not charged."
      : "Every unit of this sale is taken.");
    refreshButton();
  }

  function showFailed(title, detail) {
    phase = "failed";
    submitting = false;
    setStatus("failed", title, detail);
    refreshButton();
    announceFinal();
  }

  function showPending() {
    phase = "pending";
    setStatus("pending", "Payment pending",
      "Waiting for your bank. You can keep this page open or reload it; you will be charged once.");
    refreshButton();
    if (tab.order_id) checkResultLater(tab.order_id, RESULT_CHECKS);
  }

  function checkResultLater(orderId, checksLeft) {
    window.clearTimeout(resultCheck);
    resultCheck = window.setTimeout(function () {
      if (tab.order_id !== orderId || !busy() || results[orderId]) return;
      loadOrder(orderId);
      if (checksLeft > 1) checkResultLater(orderId, checksLeft - 1);
    }, RESULT_CHECK_MS);
  }

  function showResult(result, quiet) {
    tab.result = result;
    tab.inflight = null;
    writeStore();
    submitting = false;
    if (result.status === "succeeded") {
      phase = "paid";
      setStatus("paid", "Paid. Thank you!", "Charge ", result.charge_id);
    } else if (result.status === "declined" &&
               result.code === "payment_intent_authentication_failure") {
      // Stripe's message here is for developers; the customer needs to know what happened.
      phase = "declined";
      setStatus("declined", "Card not authenticated",
        "Your bank could not confirm this payment. You can try again or use another card.");
    } else if (result.status === "declined") {
      phase = "declined";
      setStatus("declined", "Card declined",
        (result.message || "Your card was declined.") + " You can try another card.");
    } else {
      phase = "failed";
      setStatus("failed", "Payment failed",
        (result.message || "The payment could not be completed.") + " Please try again.");
    }
    refreshButton();
    if (!quiet) announceFinal();
  }

  function updateStock(left) {
    stockLeft = left;
    stockBox.setAttribute("data-level", left <= 0 ? "none" : left <= LOW_STOCK ? "low" : "ok");
    stockText.textContent = "";
    if (left > 0) {
      var count = span("", String(left));
      count.id = "stock-count";
      stockText.appendChild(count);
      stockText.appendChild(document.createTextNode(" left"));
    } else if (room && !roomOver) {
      // Every unit is held by a customer paying: one may come back to the line.
      stockBox.setAttribute("data-level", "low");
      stockText.textContent = "All held by customers paying";
    } else {
      stockText.textContent = "Sold out";
    }
    if (room) {
      // held units are not in the count: only the room says sold out
    } else if (left <= 0 && (phase === "ready" || phase === "declined" || phase === "failed")) {
      showSoldOut(false);
    } else if (left > 0 && phase === "sold-out") {
      phase = "ready";  // a declined buyer's unit came back
      setStatus("ready");
    }
    refreshButton();
  }

  // --- the waiting room -----------------------------------------------------------------------

  function showQueued(position, etaSeconds) {
    if (phase !== "queued") return;
    var eta = etaSeconds == null ? "Your turn comes as units free up."
      : "About " + Math.max(1, Math.round(etaSeconds)) + " s to go.";
    setStatus("queued", "You are in line: number " + position,
      eta + " Keep this page open; it updates by itself and keeps your place if you reload.");
    byId("status").setAttribute("data-position", String(position));
    refreshButton();
  }

  function showAdmitted(payload) {
    tab.admission = payload.admission_token;
    writeStore();
    if (phase !== "queued" && phase !== "lapsed") return;  // a reminder while paying
    phase = "ready";
    setStatus("admitted", "It is your turn",
      "A unit is held for you for " + Math.round(payload.hold_s) + " s. Pay below.");
    refreshButton();
    announceFinal();
  }

  function showLapsed() {
    if (busy() || phase === "paid" || phase === "sold-out") return;
    phase = "lapsed";
    tab.admission = null;
    tab.lapsed = true;  // the server let this customer go: a reload queues as a new one
    writeStore();
    setStatus("failed", "Your turn has passed",
      "The unit held for you went to the next customer in line. Reload to queue again.");
    refreshButton();
  }

  function broken(title, detail) {
    phase = "broken";
    setStatus("failed", title, detail);
    refreshButton();
  }

  // --- talking to the server ------------------------------------------------------------------

  function renewIdentity() {
    // A new customer: the stored room token was refused (expired, or the server's secret changed).
    return fetch("/session", { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) throw new Error("session " + response.status);
      return response.json();
    }).then(function (identity) {
      tab = freshTab(identity);
      writeStore();
    });
  }

  function loadOrder(orderId) {
    // One look-up of the stored order; shows it if final (still pending: the caller decides).
    fetch("/orders/" + encodeURIComponent(orderId), {
      headers: { "X-Room-Token": tab.room_token }, credentials: "same-origin"
    }).then(function (response) { return response.json(); }).then(function (order) {
      if (order.status && order.status !== "pending" && !results[orderId]) {
        results[orderId] = order;
        if (tab.order_id === orderId) showResult(order, false);
      }
    }, function () { /* the socket's replay on the next join still brings it */ });
  }

  function send(inflight) {
    phase = "sending";
    setStatus("pending", "Sending your payment…", "");
    refreshButton();
    fetch("/charges", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({
        customer_id: tab.customer_id,
        room_token: tab.room_token,
        token: intents ? undefined : inflight.token,
        payment_method: intents ? inflight.token : undefined,
        quantity: inflight.quantity,
        admission_token: tab.admission || undefined
      })
    }).then(function (response) {
      return response.json().then(function (body) { return { response: response, body: body }; });
    }).then(function (answer) {
      var response = answer.response;
      var body = answer.body || {};
      var error = body.error || {};
      if (response.ok) {
        tab.order_id = body.order_id;
        writeStore();
        if (results[body.order_id]) showResult(results[body.order_id], false);
        else if (body.status && body.status !== "pending") loadOrder(body.order_id);
        else {
          showPending();
          // The room may have asked for 3D Secure before this answer arrived.
          if (actions[body.order_id]) authenticate(actions[body.order_id]);
        }
        return;
      }
      tab.inflight = null;
      writeStore();
      submitting = false;
      if (response.status === 409 && error.code === "sold_out") {
        updateStock(0);  // the server knows better than our last stock update
        showSoldOut(true);
        announceFinal();
      } else if (error.code === "hold_lapsed" || error.code === "not_admitted") {
        showLapsed();
      } else if (error.code === "invalid_admission_token") {
        // Expired or not the shop's: back in line, where the server still has this tab's place.
        tab.admission = null;
        writeStore();
        phase = "queued";
        setStatus("queued", "Your turn has not come yet",
          "The shop did not accept this page's admission; nothing was charged. You keep your " +
          "place in line and this page updates by itself.");
        refreshButton();
      } else if (error.code === "invalid_room_token" || error.code === "forbidden") {
        renewIdentity().then(function () { socket.disconnect().connect(); });
        showFailed("Your session expired", "Nothing was charged. Please pay again.");
      } else {
        showFailed("Payment not accepted", (error.message || "Please try again.") + "");
      }
    }).catch(function () {
      // Unknown whether the server got it: keep the token, so "Try again" resends the same one
      // and the server's customer + token de-duplication makes it the same order.
      showFailed("Connection problem",
        "We could not reach the shop. Try again; you will not be charged twice.");
    });
  }

  // --- wiring ---------------------------------------------------------------------------------

  byId("price").textContent = money(sale.amount);  // the same format as the pay button
  if (room) quantity.value = "1";

  if (typeof window.Stripe !== "function") {
    broken("The payment form could not load", "Check your connection and reload the page.");
    return;
  }
  if (typeof window.io !== "function") {
    broken("Live updates could not load", "Check your connection and reload the page.");
    return;
  }

  var stripe = window.Stripe(embedded.publishable_key);
  var card = stripe.elements().create("card", {
    hidePostalCode: true,
    style: {
      base: { fontSize: "16px", color: "#1a1f36", "::placeholder": { color: "#6b7385" } },
      invalid: { color: "#b4173a" }
    }
  });
  card.mount("#card-element");
  card.on("change", function (event) {
    cardErrors.textContent = event && event.error ? event.error.message : "";
  });

  var identityRenewed = false;
  var socket = window.io({
    transports: ["websocket"],
    // A function, so every reconnect presents the tab's current room token.
    auth: function (callback) { callback({ room_token: tab.room_token, watch_stock: true }); }
  });
  // A reload keeps the stored identity: the one this page was rendered with got a ticket in
  // line that nobody will use. Hand it back at once, or it holds a place until the grace ends.
  var spareTicket = room && embedded.customer_id !== tab.customer_id ? embedded.room_token : null;
  socket.on("joined", function () {
    connection.hidden = true;
    if (spareTicket) {
      socket.emit("leave", { room_token: spareTicket, spare: true });
      spareTicket = null;
    }
  });
  socket.on("disconnect", function (reason) {
    connection.hidden = false;
    if (reason === "io server disconnect") socket.connect();
  });
  socket.on("connect_error", function () {
    connection.hidden = false;
    if (socket.active) return;  // a network failure: socket.io retries with backoff by itself
    // Refused by the server: our room token is no longer valid. Start over once as a new customer.
    if (identityRenewed) {
      broken("Live updates unavailable", "Please reload the page.");
      return;
    }
    identityRenewed = true;
    var hadPayment = busy();
    renewIdentity().then(function () {
      if (hadPayment) {
        showFailed("Your session expired", "We cannot show that payment here any more.");
      }
      socket.connect();
    }, function () { broken("Live updates unavailable", "Please reload the page."); });
  });
  socket.on("stock", function (payload) {
    if (payload && payload.sku === sale.sku) updateStock(payload.stock_left);
  });
  socket.on("queue", function (payload) {
    if (payload) showQueued(payload.position, payload.eta_s);
  });
  socket.on("admitted", function (payload) {
    if (payload && payload.admission_token) showAdmitted(payload);
  });
  socket.on("sold_out", function () {
    roomOver = true;
    if (phase !== "paid" && !busy()) showSoldOut(false);
    updateStock(0);
  });
  socket.on("hold_lapsed", showLapsed);
  // 3D Secure: the card asks the customer to authenticate; Stripe.js shows its challenge. The
  // result still comes as charge_result, once Stripe tells the server how the payment ended.
  socket.on("action_required", function (action) {
    if (!action || !action.order_id) return;
    actions[action.order_id] = action;  // kept: the order id may not be known here yet
    if (action.order_id === tab.order_id && busy()) authenticate(action);
  });

  function authenticate(action) {
    if (results[action.order_id] || authenticating[action.order_id]) return;  // a replay
    authenticating[action.order_id] = true;
    setStatus("pending", "Confirm the payment with your bank…", "");
    stripe.handleNextAction({ clientSecret: action.client_secret }).then(function () {
      // Declined or not, the answer comes from the server (charge_result).
      if (!results[action.order_id]) setStatus("pending", "Payment pending…", "");
    }, function () {
      authenticating[action.order_id] = false;
      showFailed("Connection problem", "We could not reach your bank. Please try again.");
    });
  }

  socket.on("charge_result", function (result) {
    if (!result || !result.order_id) return;
    results[result.order_id] = result;
    // Replays bring every finished order of this customer: only the latest one is on screen.
    if (result.order_id === tab.order_id && busy()) showResult(result, false);
  });

  quantity.addEventListener("change", refreshButton);

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (submitting || busy() || pay.disabled) return;
    submitting = true;
    cardErrors.textContent = "";
    if (tab.inflight && !tab.order_id) {
      send(tab.inflight);  // after a connection problem: the same token, so the same order
      return;
    }
    phase = "tokenizing";
    setStatus("pending", "Securing your card…", "");
    refreshButton();
    var made = intents ? stripe.createPaymentMethod({ type: "card", card: card }) :
      stripe.createToken(card);
    made.then(function (outcome) {
      if (outcome.error) {
        submitting = false;
        phase = "ready";
        setStatus("ready");
        refreshButton();
        cardErrors.textContent = outcome.error.message || "Check your card details.";
        return;
      }
      // The card as Stripe holds it (tok_... or pm_...): resent as is after a connection problem.
      var held = intents ? outcome.paymentMethod.id : outcome.token.id;
      tab.inflight = { token: held, quantity: parseInt(quantity.value, 10) || 1 };
      tab.order_id = null;
      tab.result = null;
      writeStore();
      send(tab.inflight);
    }, function () {
      showFailed("Connection problem", "We could not reach Stripe. Please try again.");
    });
  });

  // --- where this tab left off ----------------------------------------------------------------

  if (tab.order_id && tab.result && tab.result.order_id === tab.order_id) {
    showResult(tab.result, true);     // already final; the replay on join says the same
  } else if (tab.order_id) {
    showPending();                     // the result arrives live or in the replay on join
  } else if (tab.inflight) {
    submitting = true;
    send(tab.inflight);                // reloaded mid-send: the same token, so the same order
  } else if (room && room.status === "sold_out") {
    showSoldOut(false);
  } else if (phase === "queued") {
    showQueued(room.position || "…", room.eta_s);
  } else if (!room && stockLeft <= 0) {
    showSoldOut(false);
  } else {
    refreshButton();
  }
})();
