// The chat page's script: one WebSocket to /ws on the page's own host, the conversation
// as it arrives, an input line. No framework, no build step.
//
// Everything received is inserted with textContent, never as HTML: another user's
// "<img src=x onerror=...>" shows as those characters. The Content-Security-Policy forbids
// inline script anyway; this is the first line of defence, not the only one.
(function () {
  "use strict";

  var MAX_LINES = 2000; // older lines are dropped, so a long session stays light
  var HISTORY = 100; // lines sent that Up and Down walk through
  var NEAR_BOTTOM_PX = 24; // "at the bottom" with some slack for rounding and zoom

  var log = document.getElementById("log");
  var latest = document.getElementById("latest");
  var stateBadge = document.getElementById("state");
  var reconnectButton = document.getElementById("reconnect");
  var form = document.getElementById("composer");
  var input = document.getElementById("input");
  var sendButton = document.getElementById("send");

  var socket = null;
  var decoder = new TextDecoder("utf-8"); // binary messages: invalid bytes show as U+FFFD
  var sent = []; // lines sent, oldest first
  var recall = 0; // position in `sent` while walking with Up/Down (sent.length = the draft)
  var draft = "";

  function wsUrl() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + "/ws";
  }

  function setState(state) {
    stateBadge.dataset.state = state;
    stateBadge.textContent = state;
    var connected = state === "connected";
    var closed = state === "disconnected";
    input.disabled = !connected;
    input.placeholder = closed ? "Disconnected" : "Type a message\u2026";
    sendButton.disabled = !connected;
    // After a close the composer's button reconnects: the input is of no use until then.
    sendButton.hidden = closed;
    reconnectButton.hidden = !closed;
    document.title = connected ? "gserver chat" : "gserver chat (" + state + ")";
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight <= NEAR_BOTTOM_PX;
  }

  function scrollToBottom() {
    log.scrollTop = log.scrollHeight;
    latest.hidden = true;
  }

  // A stable colour per name, so that a conversation is easy to follow.
  function colourOf(name) {
    var hash = 0;
    for (var i = 0; i < name.length; i++) {
      hash = (hash * 31 + name.charCodeAt(i)) | 0;
    }
    return "name-" + (Math.abs(hash) % 8);
  }

  var CHAT_LINE = /^\[([^\]\s]{1,64})\]: /; // "[alice]: text", as gserver's chat says it

  function render(text, kind) {
    var line = document.createElement("div");
    line.className = "line" + (kind ? " line-" + kind : "");
    var match = kind ? null : CHAT_LINE.exec(text);
    if (match) {
      var name = document.createElement("span");
      name.className = "name " + colourOf(match[1]);
      name.textContent = match[0];
      line.appendChild(name);
      line.appendChild(document.createTextNode(text.slice(match[0].length)));
    } else {
      line.textContent = text;
    }
    return line;
  }

  function append(text, kind) {
    var stick = atBottom();
    log.appendChild(render(text, kind));
    while (log.childElementCount > MAX_LINES) {
      var first = log.firstElementChild;
      var height = first.offsetHeight;
      log.removeChild(first);
      if (!stick) {
        log.scrollTop -= height; // keep what the reader is looking at in place
      }
    }
    if (stick) {
      scrollToBottom();
    } else if (kind !== "note") {
      latest.hidden = false;
    }
  }

  function connect() {
    if (socket && socket.readyState <= WebSocket.OPEN) {
      return;
    }
    setState("connecting");
    var ws = new WebSocket(wsUrl());
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.addEventListener("open", function () {
      if (socket !== ws) return;
      setState("connected");
      input.focus();
    });
    ws.addEventListener("message", function (event) {
      if (socket !== ws) return;
      var text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
      append(text);
    });
    ws.addEventListener("close", function (event) {
      if (socket !== ws) return;
      socket = null;
      var why = event.code === 1000 ? "" : " (" + event.code + (event.reason ? ": " + event.reason : "") + ")";
      append("Disconnected" + why, "note");
      setState("disconnected");
      reconnectButton.focus();
    });
  }

  function send(text) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return false;
    }
    socket.send(text);
    if (text && sent[sent.length - 1] !== text) {
      sent.push(text);
      if (sent.length > HISTORY) sent.shift();
    }
    recall = sent.length;
    draft = "";
    return true;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (send(input.value)) {
      input.value = "";
      scrollToBottom(); // having spoken, one wants to see the answer
    }
  });

  function show(value) {
    input.value = value;
    // After the value is in, so that the caret lands at its end.
    window.requestAnimationFrame(function () {
      input.setSelectionRange(value.length, value.length);
    });
  }

  input.addEventListener("keydown", function (event) {
    if (event.key === "ArrowUp" && recall > 0) {
      event.preventDefault();
      if (recall === sent.length) draft = input.value;
      recall -= 1;
      show(sent[recall]);
    } else if (event.key === "ArrowDown" && recall < sent.length) {
      event.preventDefault();
      recall += 1;
      show(recall === sent.length ? draft : sent[recall]);
    }
  });

  log.addEventListener("scroll", function () {
    if (atBottom()) latest.hidden = true;
  });
  latest.addEventListener("click", scrollToBottom);
  reconnectButton.addEventListener("click", function () {
    append("Reconnecting…", "note");
    connect();
  });

  // Leaving the page (even into the back/forward cache) is leaving the chat: close now,
  // so that the others see the leave at once; coming back shows the closed state.
  window.addEventListener("pagehide", function () {
    if (socket) socket.close(1000, "page left");
  });
  window.addEventListener("pageshow", function (event) {
    if (event.persisted && !socket) setState("disconnected");
  });

  connect();
})();
