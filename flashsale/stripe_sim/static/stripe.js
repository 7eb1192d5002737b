/* flashsale stripe-sim: a small Stripe.js v3 look-alike for offline rehearsals.
 * Stripe(pk).elements().create('card').mount(selector); stripe.createToken(card),
 * stripe.createPaymentMethod({type: 'card', card}), stripe.retrievePaymentIntent(secret),
 * stripe.confirmCardPayment(secret, {payment_method}) and stripe.handleNextAction({clientSecret})
 * resolve to {token} / {paymentMethod} / {paymentIntent} or {error}, the shapes checkout code
 * written for Stripe.js expects. Card data goes to this simulator with the publishable key, like
 * Stripe.js; a 3D Secure challenge opens in a modal frame (#stripe-sim-3ds-frame) served by the
 * simulator, and the promise settles once the customer answers it.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var apiBase = script && script.src ? new URL(script.src).origin : window.location.origin;

  function field(name, placeholder, size, autocomplete, label) {
    var input = document.createElement("input");
    input.name = name;
    input.placeholder = placeholder;
    // Stripe's own inputs carry accessible names inside their iframe; ours sit in the page.
    input.setAttribute("aria-label", label);
    input.autocomplete = autocomplete;
    input.inputMode = "numeric";
    input.size = size;
    input.setAttribute("data-stripe-sim", name);
    input.style.cssText = "border:0;outline:0;font:inherit;background:transparent;margin-right:8px";
    return input;
  }

  function digits(value) {
    return String(value || "").replace(/\D/g, "");
  }

  function brandOf(number) {
    if (/^4/.test(number)) return "visa";
    if (/^(5[1-5]|2[2-7])/.test(number)) return "mastercard";
    if (/^3[47]/.test(number)) return "amex";
    if (/^(6011|65|64[4-9])/.test(number)) return "discover";
    return "unknown";
  }

  function CardElement(options) {
    this.options = options || {};
    this.handlers = {};
    this.container = null;
    this.number = field("cardnumber", "Card number", 20, "cc-number", "Card number");
    this.expiry = field("exp-date", "MM / YY", 7, "cc-exp", "Expiration date (MM / YY)");
    this.cvc = field("cvc", "CVC", 4, "cc-csc", "Security code (CVC)");
    var self = this;
    [this.number, this.expiry, this.cvc].forEach(function (input) {
      input.addEventListener("input", function () { self._emit("change", self._state()); });
      input.addEventListener("focus", function () { self._emit("focus", {elementType: "card"}); });
      input.addEventListener("blur", function () { self._emit("blur", {elementType: "card"}); });
    });
  }

  CardElement.prototype.mount = function (target) {
    var node = typeof target === "string" ? document.querySelector(target) : target;
    if (!node) throw new Error("stripe-sim: mount target not found: " + target);
    var box = document.createElement("div");
    box.className = "StripeElement StripeElement--empty";
    box.style.cssText = "display:flex;align-items:center";
    box.appendChild(this.number);
    box.appendChild(this.expiry);
    box.appendChild(this.cvc);
    node.appendChild(box);
    this.container = box;
    var self = this;
    setTimeout(function () { self._emit("ready", {elementType: "card"}); }, 0);
    return this;
  };

  CardElement.prototype.unmount = function () {
    if (this.container && this.container.parentNode) {
      this.container.parentNode.removeChild(this.container);
    }
  };
  CardElement.prototype.destroy = CardElement.prototype.unmount;
  CardElement.prototype.update = function (options) {
    for (var key in options) this.options[key] = options[key];
  };
  CardElement.prototype.focus = function () { this.number.focus(); };
  CardElement.prototype.blur = function () { this.number.blur(); };
  CardElement.prototype.clear = function () {
    this.number.value = this.expiry.value = this.cvc.value = "";
    this._emit("change", this._state());
  };
  CardElement.prototype.on = function (event, handler) {
    (this.handlers[event] = this.handlers[event] || []).push(handler);
    return this;
  };
  CardElement.prototype.off = function (event, handler) {
    this.handlers[event] = (this.handlers[event] || []).filter(function (h) { return h !== handler; });
    return this;
  };
  CardElement.prototype._emit = function (event, payload) {
    (this.handlers[event] || []).forEach(function (handler) { handler(payload); });
  };
  CardElement.prototype._values = function () {
    var expiry = digits(this.expiry.value);
    return {
      number: digits(this.number.value),
      exp_month: expiry.slice(0, 2),
      exp_year: expiry.slice(2),
      cvc: digits(this.cvc.value)
    };
  };
  CardElement.prototype._state = function () {
    var v = this._values();
    var empty = !v.number && !v.exp_month && !v.cvc;
    var complete = v.number.length >= 12 && v.exp_month.length === 2 && v.exp_year.length >= 2 &&
      v.cvc.length >= 3;
    return {elementType: "card", empty: empty, complete: complete, brand: brandOf(v.number),
            error: undefined, value: {}};
  };

  function encode(params) {
    return Object.keys(params).filter(function (key) {
      return params[key] !== undefined && params[key] !== null && params[key] !== "";
    }).map(function (key) {
      return encodeURIComponent(key) + "=" + encodeURIComponent(params[key]);
    }).join("&");
  }

  function Stripe(publishableKey, options) {
    if (!(this instanceof Stripe)) return new Stripe(publishableKey, options);
    if (!publishableKey || typeof publishableKey !== "string") {
      throw new Error("Stripe(): a publishable key is required, e.g. Stripe('pk_test_...')");
    }
    this.key = publishableKey;
    this.options = options || {};
  }

  Stripe.prototype.elements = function () {
    return {
      create: function (type, options) {
        if (type !== "card") throw new Error("stripe-sim supports only the 'card' element");
        return new CardElement(options);
      },
      getElement: function () { return null; }
    };
  };

  Stripe.prototype.createToken = function (element, data) {
    if (!(element instanceof CardElement)) {
      return Promise.resolve({error: {type: "validation_error", message: "Pass a card element."}});
    }
    var values = element._values();
    var params = {
      key: this.key,
      "card[number]": values.number,
      "card[exp_month]": values.exp_month,
      "card[exp_year]": values.exp_year,
      "card[cvc]": values.cvc,
      payment_user_agent: "stripe.js/flashsale-sim"
    };
    data = data || {};
    ["name", "address_line1", "address_line2", "address_city", "address_state", "address_zip",
     "address_country", "currency"].forEach(function (name) {
      if (data[name]) params["card[" + name + "]"] = data[name];
    });
    return fetch(apiBase + "/v1/tokens", {
      method: "POST",
      headers: {"Content-Type": "application/x-www-form-urlencoded"},
      body: encode(params)
    }).then(function (response) {
      return response.json().then(function (body) {
        if (response.ok) return {token: body};
        return {error: body.error || {type: "api_error", message: "Unexpected response"}};
      });
    }, function (failure) {
      return {error: {type: "api_connection_error", message: String(failure)}};
    });
  };

  function call(method, path, params) {
    var url = apiBase + path;
    var init = {method: method, headers: {}};
    if (method === "GET") {
      url += "?" + encode(params);
    } else {
      init.headers["Content-Type"] = "application/x-www-form-urlencoded";
      init.body = encode(params);
    }
    return fetch(url, init).then(function (response) {
      return response.json().then(function (body) {
        return {ok: response.ok, body: body};
      });
    }, function (failure) {
      return {ok: false, body: {error: {type: "api_connection_error", message: String(failure)}}};
    });
  }

  function failed(answer) {
    return {error: answer.body.error || {type: "api_error", message: "Unexpected response"}};
  }

  function cardParams(element) {
    var values = element._values();
    return {
      "card[number]": values.number,
      "card[exp_month]": values.exp_month,
      "card[exp_year]": values.exp_year,
      "card[cvc]": values.cvc
    };
  }

  function intentId(clientSecret) {
    return String(clientSecret || "").split("_secret_")[0];
  }

  Stripe.prototype.createPaymentMethod = function (options) {
    options = options || {};
    if (options.type !== "card" || !(options.card instanceof CardElement)) {
      return Promise.resolve({error: {type: "validation_error",
                                      message: "Pass {type: 'card', card: cardElement}."}});
    }
    var params = cardParams(options.card);
    params.key = this.key;
    params.type = "card";
    params.payment_user_agent = "stripe.js/flashsale-sim";
    var billing = options.billing_details || {};
    if (billing.name) params["billing_details[name]"] = billing.name;
    return call("POST", "/v1/payment_methods", params).then(function (answer) {
      return answer.ok ? {paymentMethod: answer.body} : failed(answer);
    });
  };

  Stripe.prototype.retrievePaymentIntent = function (clientSecret) {
    var params = {key: this.key, client_secret: clientSecret};
    return call("GET", "/v1/payment_intents/" + intentId(clientSecret), params)
      .then(function (answer) {
        return answer.ok ? {paymentIntent: answer.body} : failed(answer);
      });
  };

  /* Settle as Stripe.js does once no action is pending: a PaymentIntent back at
   * requires_payment_method is an error carrying the PaymentIntent. */
  function outcome(intent) {
    if (intent.status === "requires_payment_method" && intent.last_payment_error) {
      var error = Object.assign({}, intent.last_payment_error);
      error.payment_intent = intent;
      return {error: error};
    }
    return {paymentIntent: intent};
  }

  function challenge(url) {
    return new Promise(function (resolve) {
      var overlay = document.createElement("div");
      overlay.id = "stripe-sim-3ds";
      overlay.style.cssText = "position:fixed;inset:0;background:rgba(0,0,0,.4);z-index:2147483647;" +
        "display:flex;align-items:center;justify-content:center";
      var frame = document.createElement("iframe");
      frame.id = "stripe-sim-3ds-frame";
      frame.title = "3D Secure authentication";
      frame.style.cssText = "width:420px;height:320px;border:0;background:#fff;border-radius:6px";
      frame.src = url;
      overlay.appendChild(frame);
      function done(event) {
        if (event.origin !== apiBase || event.data !== "stripe-sim-3ds-done") return;
        window.removeEventListener("message", done);
        overlay.remove();
        resolve();
      }
      window.addEventListener("message", done);
      document.body.appendChild(overlay);
    });
  }

  Stripe.prototype.handleNextAction = function (options) {
    var self = this;
    var secret = (options || {}).clientSecret;
    return self.retrievePaymentIntent(secret).then(function (result) {
      if (result.error) return result;
      var intent = result.paymentIntent;
      var action = intent.next_action;
      if (intent.status !== "requires_action" || !action) return outcome(intent);
      if (action.type === "redirect_to_url") {
        window.location.assign(action.redirect_to_url.url);
        return new Promise(function () {});  // the page is leaving
      }
      return challenge(action.use_stripe_sdk.stripe_js).then(function () {
        return self.retrievePaymentIntent(secret).then(function (after) {
          return after.error ? after : outcome(after.paymentIntent);
        });
      });
    });
  };

  Stripe.prototype.confirmCardPayment = function (clientSecret, data) {
    var self = this;
    data = data || {};
    var method = data.payment_method;
    var made = method instanceof Object && method.card instanceof CardElement
      ? self.createPaymentMethod({type: "card", card: method.card,
                                  billing_details: method.billing_details})
      : Promise.resolve({paymentMethod: method ? {id: method} : null});
    return made.then(function (created) {
      if (created.error) return created;
      var params = {key: self.key, client_secret: clientSecret};
      if (created.paymentMethod) params.payment_method = created.paymentMethod.id;
      if (data.return_url) params.return_url = data.return_url;
      return call("POST", "/v1/payment_intents/" + intentId(clientSecret) + "/confirm", params)
        .then(function (answer) {
          if (!answer.ok) return failed(answer);
          if (answer.body.status === "requires_action") {
            return self.handleNextAction({clientSecret: clientSecret});
          }
          return outcome(answer.body);
        });
    });
  };

  window.Stripe = Stripe;
})();
