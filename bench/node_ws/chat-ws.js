// The seed's chat server (the Node `net` tutorial, section 4), served over WebSocket with
// the `ws` package instead of `net`, as the baseline for gserver's WebSocket benchmark.
//
// Same wire text as the seed: what the seed writes with one socket.write() goes out as one
// text message, without its trailing newline ("Enter your username: " has none and goes as
// it is). Each incoming message is split into lines at \n or \r\n, and each line is what
// one `data` event was in the seed (trimmed, then a name, a command or a chat line).
//
// PORT (default 8080) and HOST come from the environment, as in the seed; QUIET=1
// silences the per-message logs so that logging does not weigh on the benchmark.
'use strict';

const { WebSocketServer } = require('ws');

if (process.env.QUIET) console.log = () => {};

// The same per-message cap as gserver's default (4 x max_line_bytes of 16384), so that
// neither server buffers more for one message than the other.
const MAX_PAYLOAD = 65536;

function outgoing(text) {
  // One seed write -> one text message, without its line ending.
  return text.endsWith('\n') ? text.slice(0, -1) : text;
}

function lines(text) {
  // A message need not end with a newline; one that does has no empty line after it.
  const parts = text.split(/\r?\n/);
  if (parts.length > 1 && parts[parts.length - 1] === '') parts.pop();
  return parts;
}

class ChatServer {
  constructor(port) {
    this.port = port;
    this.clients = new Map(); // Map<WebSocket, username>
    this.server = null;
  }

  start() {
    this.server = new WebSocketServer({
      port: this.port,
      host: process.env.HOST,
      maxPayload: MAX_PAYLOAD,
      perMessageDeflate: false,
      // The seed's net server keeps Node's default backlog; ws passes this to listen().
      backlog: 511,
    });
    this.server.on('connection', (ws) => this.handleClient(ws));
    this.server.on('listening', () => {
      console.log(`Chat Server running on port ${this.port}`);
    });
  }

  handleClient(ws) {
    ws.send(outgoing('Enter your username: '));
    let username = null;
    ws.on('message', (data) => {
      for (const line of lines(data.toString())) {
        username = this.handleLine(ws, username, line.trim());
      }
    });
    ws.on('close', () => {
      if (username && this.clients.has(ws)) {
        console.log(`${username} left`);
        this.clients.delete(ws);
        this.broadcast(`${username} left the chat\n`, ws);
      }
    });
    ws.on('error', (err) => {
      console.error('Socket error:', err.message);
      this.clients.delete(ws);
    });
  }

  // The seed's `data` handler for one line; returns the (possibly new) username.
  handleLine(ws, username, message) {
    if (!username) {
      username = message;
      this.clients.set(ws, username);
      ws.send(outgoing(`Welcome ${username}!\n`));
      this.broadcast(`${username} joined the chat\n`, ws);
      console.log(`${username} joined`);
      return username;
    }
    if (message.startsWith('/')) {
      this.handleCommand(ws, message);
      return username;
    }
    const chatMessage = `[${username}]: ${message}\n`;
    console.log(chatMessage.trim());
    this.broadcast(chatMessage);
    return username;
  }

  handleCommand(ws, command) {
    if (command === '/users') {
      const userList = Array.from(this.clients.values()).join(', ');
      ws.send(outgoing(`Online users: ${userList}\n`));
    } else if (command === '/help') {
      ws.send(outgoing('Commands:\n'));
      ws.send(outgoing('/users - View user list\n'));
      ws.send(outgoing('/help - Show help\n'));
      ws.send(outgoing('/quit - Exit chat\n'));
    } else if (command === '/quit') {
      ws.close(1000);
    } else {
      ws.send(outgoing('Unknown command. Type /help for help\n'));
    }
  }

  broadcast(message, excludeSocket = null) {
    // Framed per recipient, as idiomatic `ws` code does (ws.send on each client).
    const text = outgoing(message);
    for (const [ws] of this.clients) {
      if (ws !== excludeSocket && ws.readyState === ws.OPEN) {
        ws.send(text);
      }
    }
  }
}

const chatServer = new ChatServer(Number(process.env.PORT || 8080));
chatServer.start();
