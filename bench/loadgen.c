/*
 * loadgen: a single-threaded epoll load generator for gserver and its references.
 *
 *   loadgen echo --port P [--host 127.0.0.1] [--conns 100] [--size 64] [--duration 5] [--warmup 1]
 *   loadgen chat --port P [--clients 500] [--senders 20] [--duration 5] [--warmup 1] [--quiet 2]
 *   loadgen idle --port P [--conns 10000] [--hold 120]
 *   loadgen churn --port P [--conns 50] [--duration 5] [--warmup 1]
 *
 * churn keeps --conns clients at a time each connecting, reading the greeting (its first
 * line) and closing, a new one at once in its place: connections per second, the time from
 * connect() to the greeting, and every refusal, reset, early close or timeout, counted.
 *
 * With --ws PATH (say --ws /ws) every connection is a WebSocket client instead (RFC 6455):
 * it sends the HTTP upgrade request for PATH, then each line it would send is one masked
 * text message without its '\n', and each message it receives (unmasked server frames, text
 * or binary, fragments joined) is one line; pings are answered with pongs.  Everything
 * else (greetings, names, what is measured) is as over TCP.
 *
 * Every subcommand prints one JSON object on stdout (idle prints a {"ready": true} line first,
 * then its summary when stdin closes or --hold seconds pass). Connections are opened with at
 * most --pending (default 128) waiting for their greeting, below any server's listen backlog.
 * Every phase is bounded in time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- time, histogram */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Log-linear histogram of microseconds: exact below 1024, then 512 sub-buckets per power of
 * two (relative error < 0.2 %). */
#define H_LINEAR 1024
#define H_SUB 512
#define H_SIZE (H_LINEAR + 40 * H_SUB)
static uint64_t hist[H_SIZE];
static uint64_t hist_n;

static void hist_add(uint64_t us) {
    size_t i;
    if (us < H_LINEAR) {
        i = (size_t)us;
    } else {
        int e = 63 - __builtin_clzll(us); /* >= 10 */
        i = H_LINEAR + (size_t)(e - 10) * H_SUB + (size_t)((us >> (e - 9)) & (H_SUB - 1));
        if (i >= H_SIZE) i = H_SIZE - 1;
    }
    hist[i]++;
    hist_n++;
}

static uint64_t hist_value(size_t i) {
    if (i < H_LINEAR) return i;
    size_t k = i - H_LINEAR;
    int e = (int)(k / H_SUB) + 10;
    uint64_t sub = k % H_SUB;
    uint64_t lo = (1ull << e) + (sub << (e - 9));
    return lo + (1ull << (e - 10)); /* middle of the bucket */
}

static uint64_t hist_pct(double p) {
    if (hist_n == 0) return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)hist_n);
    if (rank >= hist_n) rank = hist_n - 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_SIZE; i++) {
        seen += hist[i];
        if (seen > rank) return hist_value(i);
    }
    return hist_value(H_SIZE - 1);
}

/* ---------------------------------------------------------------- options */

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static int opt_conns = -1;
static int opt_size = 64;
static double opt_duration = 5.0;
static double opt_warmup = 1.0;
static int opt_senders = 20;
static double opt_quiet = 2.0;
static double opt_hold = 120.0;
static int opt_pending = 128;
static double opt_setup_timeout = 60.0;
static const char *opt_ws = NULL; /* WebSocket path, or NULL for plain TCP lines */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen echo|chat|idle|churn --port P [--host H] [--conns N | --clients N]\n"
            "       [--size B] [--duration S] [--warmup S] [--senders N] [--quiet S]\n"
            "       [--hold S] [--pending N] [--setup-timeout S] [--ws PATH]\n");
    exit(2);
}

static void parse_args(int argc, char **argv) {
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--host")) opt_host = v;
        else if (!strcmp(k, "--port")) opt_port = atoi(v);
        else if (!strcmp(k, "--conns") || !strcmp(k, "--clients")) opt_conns = atoi(v);
        else if (!strcmp(k, "--size")) opt_size = atoi(v);
        else if (!strcmp(k, "--duration")) opt_duration = atof(v);
        else if (!strcmp(k, "--warmup")) opt_warmup = atof(v);
        else if (!strcmp(k, "--senders")) opt_senders = atoi(v);
        else if (!strcmp(k, "--quiet")) opt_quiet = atof(v);
        else if (!strcmp(k, "--hold")) opt_hold = atof(v);
        else if (!strcmp(k, "--pending")) opt_pending = atoi(v);
        else if (!strcmp(k, "--setup-timeout")) opt_setup_timeout = atof(v);
        else if (!strcmp(k, "--ws")) opt_ws = v;
        else usage();
    }
    if (opt_port <= 0 || opt_port > 65535) usage();
    if (opt_size < 16 || opt_size > 4096) {
        fprintf(stderr, "loadgen: --size must be 16..4096\n");
        exit(2);
    }
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---------------------------------------------------------------- connections */

enum { ST_IDLE, ST_CONNECTING, ST_UPGRADING, ST_GREETING, ST_NAMING, ST_READY, ST_DEAD };
enum { MODE_ECHO, MODE_CHAT, MODE_IDLE, MODE_CHURN };

typedef struct {
    int fd;
    int id;
    int state;
    char *buf;
    size_t len, cap;
    char *raw; /* --ws: frames as received, before they become lines in buf */
    size_t rlen, rcap;
    uint64_t sent_ns; /* echo: send time of the request in flight; 0 = none */
    uint64_t seq;     /* echo/chat: sequence number of the next or in-flight message */
    int inflight;
} conn_t;

static int mode;
static int ep;
static conn_t *conns;
static int nconns;
static struct sockaddr_in target;

static uint64_t n_connect_errors, n_greeting_errors, n_io_errors, n_bad_replies, n_closed;
static uint64_t n_other_lines;

static void conn_kill(conn_t *c, uint64_t *counter) {
    if (c->state == ST_DEAD) return;
    if (counter) (*counter)++;
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_DEAD;
}

static void conn_start(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->state = ST_DEAD;
        n_connect_errors++;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = ST_CONNECTING;
    int r = connect(fd, (struct sockaddr *)&target, sizeof target);
    if (r < 0 && errno != EINPROGRESS) {
        conn_kill(c, &n_connect_errors);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static int raw_send_all(conn_t *c, const char *data, size_t n) {
    while (n > 0) {
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            conn_kill(c, &n_io_errors); /* includes EAGAIN: our writes are tiny */
            return -1;
        }
        data += w;
        n -= (size_t)w;
    }
    return 0;
}

/* --ws: a masked client frame (final, one message) of opcode op around data. */
static uint64_t mask_state = 0x9e3779b97f4a7c15ull;

static size_t ws_frame(char *out, int op, const char *data, size_t n) {
    size_t h = 0;
    out[h++] = (char)(0x80 | op);
    if (n < 126) {
        out[h++] = (char)(0x80 | n);
    } else {
        out[h++] = (char)(0x80 | 126);
        out[h++] = (char)(n >> 8);
        out[h++] = (char)(n & 0xff);
    }
    mask_state ^= mask_state << 13; /* xorshift64: masks need not be secret here */
    mask_state ^= mask_state >> 7;
    mask_state ^= mask_state << 17;
    unsigned char mask[4];
    memcpy(mask, &mask_state, 4);
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) out[h + i] = (char)(data[i] ^ mask[i & 3]);
    return h + n;
}

/* One line (ending in '\n') as it goes to the server: itself, or a text message without
 * its '\n' over --ws. */
static int send_all(conn_t *c, const char *data, size_t n) {
    if (!opt_ws) return raw_send_all(c, data, n);
    char frame[8192];
    if (n > 0 && data[n - 1] == '\n') n--;
    if (n > sizeof frame - 8) n = sizeof frame - 8;
    return raw_send_all(c, frame, ws_frame(frame, 0x1, data, n));
}

static void ensure_room(char **buf, size_t len, size_t *cap, size_t need) {
    if (*cap - len >= need) return;
    size_t grown = *cap ? *cap * 2 : need + 4096;
    while (grown - len < need) grown *= 2;
    *buf = realloc(*buf, grown);
    if (!*buf) {
        perror("realloc");
        exit(1);
    }
    *cap = grown;
}

static int ws_decode(conn_t *c);

/* Reads what is available into c->buf (over --ws: c->raw, then decoded into c->buf);
 * returns 0 on EOF or error (the conn is killed). */
static int conn_read(conn_t *c) {
    char **buf = opt_ws ? &c->raw : &c->buf;
    size_t *len = opt_ws ? &c->rlen : &c->len;
    size_t *cap = opt_ws ? &c->rcap : &c->cap;
    for (;;) {
        ensure_room(buf, *len, cap, 65536);
        ssize_t r = recv(c->fd, *buf + *len, *cap - *len, 0);
        if (r > 0) {
            *len += (size_t)r;
            if ((size_t)r < 65536) return opt_ws ? ws_decode(c) : 1;
            continue;
        }
        if (r == 0) {
            conn_kill(c, c->state == ST_READY ? &n_closed : &n_greeting_errors);
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return opt_ws ? ws_decode(c) : 1;
        conn_kill(c, c->state == ST_READY ? &n_io_errors : &n_greeting_errors);
        return 0;
    }
}

static uint64_t n_ws_pings;

/* --ws: the upgrade's answer, then each whole frame of c->raw: a message's payload and '\n'
 * into c->buf, a pong for each ping.  Returns 0 when the conn was killed. */
static int ws_decode(conn_t *c) {
    size_t off = 0;
    if (c->state == ST_UPGRADING) {
        char *end = memmem(c->raw, c->rlen, "\r\n\r\n", 4);
        if (!end) return 1;
        if (c->rlen < 12 || memcmp(c->raw, "HTTP/1.1 101", 12) != 0) {
            conn_kill(c, &n_greeting_errors); /* refused: 403, 503... */
            return 0;
        }
        off = (size_t)(end - c->raw) + 4;
        c->state = ST_GREETING;
    }
    while (c->rlen - off >= 2) {
        const unsigned char *p = (const unsigned char *)c->raw + off;
        int fin = p[0] & 0x80, op = p[0] & 0x0f;
        uint64_t n = p[1] & 0x7f;
        size_t h = 2;
        if (p[1] & 0x80) { /* a server must not mask */
            conn_kill(c, c->state == ST_READY ? &n_io_errors : &n_greeting_errors);
            return 0;
        }
        if (n == 126) {
            if (c->rlen - off < 4) break;
            n = ((uint64_t)p[2] << 8) | p[3];
            h = 4;
        } else if (n == 127) {
            if (c->rlen - off < 10) break;
            n = 0;
            for (int i = 0; i < 8; i++) n = (n << 8) | p[2 + i];
            h = 10;
        }
        if (c->rlen - off - h < n) break;
        const char *payload = c->raw + off + h;
        off += h + (size_t)n;
        if (op == 0x0 || op == 0x1 || op == 0x2) {
            ensure_room(&c->buf, c->len, &c->cap, (size_t)n + 1);
            memcpy(c->buf + c->len, payload, (size_t)n);
            c->len += (size_t)n;
            if (fin) c->buf[c->len++] = '\n';
        } else if (op == 0x9) {
            char frame[256];
            n_ws_pings++;
            if (n > 125) n = 125;
            if (raw_send_all(c, frame, ws_frame(frame, 0xA, payload, (size_t)n)) < 0) return 0;
        } else if (op == 0x8) {
            conn_kill(c, c->state == ST_READY ? &n_closed : &n_greeting_errors);
            return 0;
        } /* pongs: nothing to do */
    }
    if (off > 0) {
        memmove(c->raw, c->raw + off, c->rlen - off);
        c->rlen -= off;
    }
    return 1;
}

/* ---------------------------------------------------------------- per-mode line handling */

static uint64_t t_start, t_measure, t_end; /* ns */
static int sending = 0;                    /* echo/chat: send new messages */
static char payload_fill[4096];

/* echo */
static uint64_t echo_rt_window, echo_rt_total;

static size_t echo_body(conn_t *c, char *out) {
    /* opt_size bytes including the final '\n'; body = opt_size - 1 bytes, no spaces at ends */
    size_t body = (size_t)opt_size - 1;
    int n = snprintf(out, body + 1, "c%06d-%012llu-", c->id, (unsigned long long)c->seq);
    memcpy(out + n, payload_fill, body - (size_t)n);
    out[body] = '\n';
    return body + 1;
}

static void echo_send(conn_t *c) {
    char msg[4200];
    size_t n = echo_body(c, msg);
    c->sent_ns = now_ns();
    c->inflight = 1;
    send_all(c, msg, n);
}

static void echo_line(conn_t *c, const char *line, size_t len) {
    if (!c->inflight) {
        n_other_lines++;
        return;
    }
    char expect[4200];
    size_t n = echo_body(c, expect); /* includes '\n' */
    static const char tag[] = "Echo: ";
    size_t need = n + sizeof tag - 1;
    if (len < need || memcmp(line + len - n, expect, n) != 0 ||
        memcmp(line + len - need, tag, sizeof tag - 1) != 0) {
        if (memmem(line, len, "ptime", 5)) { /* an uptime broadcast: not ours */
            n_other_lines++;
            return;
        }
        n_bad_replies++;
        return;
    }
    uint64_t t = now_ns();
    echo_rt_total++;
    if (c->sent_ns >= t_measure && t <= t_end) {
        echo_rt_window++;
        hist_add((t - c->sent_ns) / 1000);
    }
    c->inflight = 0;
    c->seq++;
    if (sending) echo_send(c);
}

/* chat */
static int n_senders;
static uint64_t chat_sent_total, chat_sent_window, chat_deliv_total, chat_deliv_window;
static uint64_t chat_seq_gaps, chat_seq_dups, chat_bad_lines;
static int64_t *last_seq; /* [receiver * n_senders + sender] */
static uint64_t t_last_delivery;

static void chat_send(conn_t *c) {
    char msg[128];
    uint64_t t = now_ns();
    int n = snprintf(msg, sizeof msg, "m %d %llu %llu\n", c->id, (unsigned long long)c->seq,
                     (unsigned long long)t);
    c->sent_ns = t;
    c->inflight = 1;
    chat_sent_total++;
    if (t >= t_measure) chat_sent_window++;
    send_all(c, msg, (size_t)n);
}

static void chat_line(conn_t *c, const char *line, size_t len) {
    if (len == 0 || line[0] != '[') {
        n_other_lines++; /* join/leave notices */
        return;
    }
    const char *p = memmem(line, len, "]: m ", 5);
    if (!p) {
        chat_bad_lines++;
        return;
    }
    char tmp[128];
    size_t rest = len - (size_t)(p + 5 - line);
    if (rest >= sizeof tmp) rest = sizeof tmp - 1;
    memcpy(tmp, p + 5, rest);
    tmp[rest] = 0;
    int sid;
    unsigned long long seq, ts;
    if (sscanf(tmp, "%d %llu %llu", &sid, &seq, &ts) != 3 || sid < 0 || sid >= n_senders) {
        chat_bad_lines++;
        return;
    }
    uint64_t t = now_ns();
    t_last_delivery = t;
    chat_deliv_total++;
    if (t >= t_measure && t <= t_end) chat_deliv_window++;
    if (ts >= t_measure && ts <= t_end) hist_add((t - ts) / 1000);
    int64_t *last = &last_seq[(size_t)c->id * (size_t)n_senders + (size_t)sid];
    if ((int64_t)seq == *last + 1) {
        *last = (int64_t)seq;
    } else if ((int64_t)seq > *last + 1) {
        chat_seq_gaps += (uint64_t)((int64_t)seq - *last - 1);
        *last = (int64_t)seq;
    } else {
        chat_seq_dups++;
    }
    if (sid == c->id && c->inflight && seq == c->seq) {
        c->inflight = 0;
        c->seq++;
        if (sending) chat_send(c);
    }
}

/* ---------------------------------------------------------------- event loop */

static int n_ready, n_pending;

static void became_ready(conn_t *c) {
    c->state = ST_READY;
    n_ready++;
    n_pending--;
}

static void process_input(conn_t *c) {
    size_t off = 0;
    if (c->state == ST_GREETING) {
        if (mode == MODE_CHAT) {
            if (!memmem(c->buf, c->len, "username: ", 10)) return;
            char name[64];
            int n = snprintf(name, sizeof name, "u%d\n", c->id);
            c->len = 0; /* the prompt has no newline: drop it */
            c->state = ST_NAMING;
            send_all(c, name, (size_t)n);
            return;
        }
        char *nl = memchr(c->buf, '\n', c->len);
        if (!nl) return;
        if (!memmem(c->buf, (size_t)(nl - c->buf), "Welcome", 7)) {
            conn_kill(c, &n_greeting_errors); /* refused or unexpected greeting */
            n_pending--;
            return;
        }
        off = (size_t)(nl - c->buf) + 1;
        became_ready(c);
    }
    while (c->state != ST_DEAD && off < c->len) {
        char *start = c->buf + off;
        char *nl = memchr(start, '\n', c->len - off);
        if (!nl) break;
        size_t len = (size_t)(nl - start) + 1;
        off += len;
        if (c->state == ST_NAMING) {
            char want[64];
            int n = snprintf(want, sizeof want, "Welcome u%d!\n", c->id);
            if ((size_t)n == len && !memcmp(start, want, len)) became_ready(c);
            continue; /* anything else before our welcome is ignored */
        }
        if (c->state != ST_READY) continue;
        if (mode == MODE_ECHO) echo_line(c, start, len);
        else if (mode == MODE_CHAT) chat_line(c, start, len);
        /* idle: discard */
    }
    if (c->state == ST_DEAD) return;
    if (off > 0) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
}

static void handle_event(struct epoll_event *ev) {
    conn_t *c = ev->data.ptr;
    if (c == NULL) return; /* stdin, handled by the caller */
    if (c->state == ST_DEAD) return;
    if (c->state == ST_CONNECTING) {
        if (!(ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            conn_kill(c, &n_connect_errors);
            n_pending--;
            return;
        }
        c->state = ST_GREETING;
        struct epoll_event mod = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &mod);
        if (opt_ws) {
            char req[512];
            int n = snprintf(req, sizeof req,
                             "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n",
                             opt_ws, opt_host, opt_port);
            c->state = ST_UPGRADING;
            if (raw_send_all(c, req, (size_t)n) < 0) n_pending--;
        }
        return; /* the greeting comes as EPOLLIN */
    }
    if (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
        int was_ready = c->state == ST_READY;
        if (!conn_read(c)) {
            if (!was_ready) n_pending--;
            return;
        }
        process_input(c);
    }
}

static struct epoll_event events[1024];

static int loop_once(int timeout_ms) {
    int n = epoll_wait(ep, events, 1024, timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return 0;
        perror("epoll_wait");
        exit(1);
    }
    for (int i = 0; i < n; i++) handle_event(&events[i]);
    return n;
}

/* Opens every connection, at most opt_pending at once waiting for a greeting; bounded. */
static double setup_all(void) {
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(opt_setup_timeout * 1e9);
    int started = 0;
    while (n_ready + (int)(n_connect_errors + n_greeting_errors) < nconns) {
        while (started < nconns && n_pending < opt_pending) {
            n_pending++;
            conn_start(&conns[started]);
            if (conns[started].state == ST_DEAD) n_pending--;
            started++;
        }
        if (now_ns() > deadline) {
            for (int i = 0; i < nconns; i++) {
                if (conns[i].state != ST_READY && conns[i].state != ST_DEAD)
                    conn_kill(&conns[i], &n_greeting_errors);
            }
            n_greeting_errors += (uint64_t)(nconns - started);
            break;
        }
        loop_once(20);
    }
    return (double)(now_ns() - t0) / 1e9;
}

static void drain_for(double seconds) {
    uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
    while (now_ns() < end) loop_once(10);
}

static int count_ready(void) {
    int n = 0;
    for (int i = 0; i < nconns; i++) n += conns[i].state == ST_READY;
    return n;
}

/* ---------------------------------------------------------------- subcommands */

static int run_echo(void) {
    double setup = setup_all();
    int ready = count_ready();
    t_start = now_ns();
    t_measure = t_start + (uint64_t)(opt_warmup * 1e9);
    t_end = t_measure + (uint64_t)(opt_duration * 1e9);
    sending = 1;
    for (int i = 0; i < nconns; i++)
        if (conns[i].state == ST_READY) echo_send(&conns[i]);
    while (now_ns() < t_end) loop_once(10);
    sending = 0;
    drain_for(0.2);
    int stalled = 0;
    for (int i = 0; i < nconns; i++) stalled += conns[i].state == ST_READY && conns[i].inflight;
    uint64_t errors = n_connect_errors + n_greeting_errors + n_io_errors + n_bad_replies +
                      n_closed + (uint64_t)stalled;
    printf("{\"mode\": \"echo\", \"conns\": %d, \"conns_ready\": %d, \"size\": %d, "
           "\"duration\": %.3f, \"warmup\": %.3f, \"setup_secs\": %.3f, "
           "\"round_trips\": %llu, \"round_trips_total\": %llu, "
           "\"round_trips_per_sec\": %.1f, \"p50_us\": %llu, \"p90_us\": %llu, "
           "\"p99_us\": %llu, \"p999_us\": %llu, "
           "\"errors\": %llu, \"connect_errors\": %llu, \"greeting_errors\": %llu, "
           "\"io_errors\": %llu, \"closed_by_server\": %llu, \"bad_replies\": %llu, "
           "\"stalled\": %d, \"other_lines\": %llu}\n",
           nconns, ready, opt_size, opt_duration, opt_warmup, setup,
           (unsigned long long)echo_rt_window, (unsigned long long)echo_rt_total,
           (double)echo_rt_window / opt_duration, (unsigned long long)hist_pct(50),
           (unsigned long long)hist_pct(90), (unsigned long long)hist_pct(99),
           (unsigned long long)hist_pct(99.9), (unsigned long long)errors,
           (unsigned long long)n_connect_errors, (unsigned long long)n_greeting_errors,
           (unsigned long long)n_io_errors, (unsigned long long)n_closed,
           (unsigned long long)n_bad_replies, stalled, (unsigned long long)n_other_lines);
    return 0;
}

static int run_chat(void) {
    double setup = setup_all();
    int ready = count_ready();
    n_senders = opt_senders < ready ? opt_senders : ready;
    last_seq = malloc(sizeof(int64_t) * (size_t)nconns * (size_t)(n_senders ? n_senders : 1));
    for (size_t i = 0; i < (size_t)nconns * (size_t)(n_senders ? n_senders : 1); i++)
        last_seq[i] = -1;
    /* let the join notices settle: up to 5 s, until 200 ms pass without input */
    uint64_t settle_end = now_ns() + 5000000000ull;
    while (now_ns() < settle_end && loop_once(200) > 0) {
    }
    /* senders are the first n_senders ready clients, renumbered 0..n_senders-1 by id */
    int *sender_idx = calloc((size_t)(n_senders ? n_senders : 1), sizeof(int));
    int k = 0;
    for (int i = 0; i < nconns && k < n_senders; i++)
        if (conns[i].state == ST_READY && conns[i].id < n_senders) sender_idx[k++] = i;
    n_senders = k;
    t_start = now_ns();
    t_measure = t_start + (uint64_t)(opt_warmup * 1e9);
    t_end = t_measure + (uint64_t)(opt_duration * 1e9);
    sending = 1;
    for (int i = 0; i < n_senders; i++) chat_send(&conns[sender_idx[i]]);
    while (now_ns() < t_end) loop_once(10);
    sending = 0;
    /* drain: until opt_quiet seconds without a delivery, at most 30 s */
    uint64_t drain_start = now_ns();
    t_last_delivery = drain_start;
    uint64_t quiet = (uint64_t)(opt_quiet * 1e9);
    while (now_ns() - t_last_delivery < quiet && now_ns() - drain_start < 30000000000ull)
        loop_once(10);
    double drain = (double)(now_ns() - drain_start) / 1e9;
    int alive = count_ready();
    int stalled = 0;
    for (int i = 0; i < n_senders; i++) {
        conn_t *c = &conns[sender_idx[i]];
        stalled += c->state == ST_READY && c->inflight;
    }
    uint64_t expected = chat_sent_total * (uint64_t)alive;
    long long lost = (long long)expected - (long long)chat_deliv_total;
    uint64_t errors = n_connect_errors + n_greeting_errors + n_io_errors + n_closed +
                      chat_bad_lines;
    printf("{\"mode\": \"chat\", \"clients\": %d, \"clients_ready\": %d, "
           "\"clients_alive\": %d, \"senders\": %d, \"duration\": %.3f, \"warmup\": %.3f, "
           "\"setup_secs\": %.3f, \"drain_secs\": %.3f, "
           "\"messages_sent\": %llu, \"messages_sent_in_window\": %llu, "
           "\"deliveries\": %llu, \"deliveries_in_window\": %llu, "
           "\"deliveries_per_sec\": %.1f, \"p50_us\": %llu, \"p99_us\": %llu, "
           "\"p999_us\": %llu, \"expected\": %llu, \"lost\": %lld, \"seq_gaps\": %llu, "
           "\"seq_dups\": %llu, \"stalled_senders\": %d, \"errors\": %llu, "
           "\"connect_errors\": %llu, \"greeting_errors\": %llu, \"io_errors\": %llu, "
           "\"closed_by_server\": %llu, \"bad_lines\": %llu, \"other_lines\": %llu}\n",
           nconns, ready, alive, n_senders, opt_duration, opt_warmup, setup, drain,
           (unsigned long long)chat_sent_total, (unsigned long long)chat_sent_window,
           (unsigned long long)chat_deliv_total, (unsigned long long)chat_deliv_window,
           (double)chat_deliv_window / opt_duration, (unsigned long long)hist_pct(50),
           (unsigned long long)hist_pct(99), (unsigned long long)hist_pct(99.9),
           (unsigned long long)expected, lost, (unsigned long long)chat_seq_gaps,
           (unsigned long long)chat_seq_dups, stalled, (unsigned long long)errors,
           (unsigned long long)n_connect_errors, (unsigned long long)n_greeting_errors,
           (unsigned long long)n_io_errors, (unsigned long long)n_closed,
           (unsigned long long)chat_bad_lines, (unsigned long long)n_other_lines);
    return 0;
}

static int run_idle(void) {
    double setup = setup_all();
    int ready = count_ready();
    printf("{\"ready\": true, \"conns\": %d, \"conns_ready\": %d, \"setup_secs\": %.3f, "
           "\"connect_errors\": %llu, \"greeting_errors\": %llu}\n",
           nconns, ready, setup, (unsigned long long)n_connect_errors,
           (unsigned long long)n_greeting_errors);
    fflush(stdout);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLHUP, .data.ptr = NULL};
    int watch_stdin = epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) == 0;
    uint64_t end = now_ns() + (uint64_t)(opt_hold * 1e9);
    const char *why = "hold";
    while (now_ns() < end) {
        int n = epoll_wait(ep, events, 1024, 50);
        int stop = 0;
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                char b[256];
                ssize_t r = read(0, b, sizeof b);
                if (r <= 0) stop = 1;
            } else {
                handle_event(&events[i]);
            }
        }
        if (stop) {
            why = "stdin";
            break;
        }
    }
    (void)watch_stdin;
    printf("{\"mode\": \"idle\", \"conns\": %d, \"conns_ready\": %d, \"setup_secs\": %.3f, "
           "\"held_until\": \"%s\", \"closed_by_server\": %llu, \"io_errors\": %llu, "
           "\"connect_errors\": %llu, \"greeting_errors\": %llu}\n",
           nconns, ready, setup, why, (unsigned long long)n_closed,
           (unsigned long long)n_io_errors, (unsigned long long)n_connect_errors,
           (unsigned long long)n_greeting_errors);
    return 0;
}

/* ---------------------------------------------------------------- churn */

#define CHURN_TIMEOUT_NS 5000000000ull /* a client waiting this long counts as timed out */

typedef struct {
    int fd;
    int reading;  /* 0: connect() in progress, 1: waiting for the greeting */
    uint64_t t0;  /* when connect() was called */
    size_t got;
    char buf[512];
} churn_t;

static uint64_t churn_done_total, churn_done_window, churn_started;
static uint64_t churn_refused, churn_reset, churn_connect_errors, churn_early_close;
static uint64_t churn_timeouts, churn_bad_greeting, churn_full;

static void churn_start(churn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->got = 0;
    c->reading = 0;
    c->t0 = now_ns();
    churn_started++;
    if (c->fd < 0) {
        churn_connect_errors++;
        return;
    }
    int r = connect(c->fd, (struct sockaddr *)&target, sizeof target);
    if (r < 0 && errno != EINPROGRESS) {
        if (errno == ECONNREFUSED) churn_refused++;
        else churn_connect_errors++; /* EADDRNOTAVAIL: out of local ports */
        close(c->fd);
        c->fd = -1;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void churn_end(churn_t *c, uint64_t *counter) {
    if (counter) (*counter)++;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* One readiness event for client c; c->fd is -1 afterwards once it is done (or failed). */
static void churn_event(churn_t *c, uint32_t events) {
    if (!c->reading) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            churn_end(c, err == ECONNREFUSED ? &churn_refused
                         : err == ECONNRESET ? &churn_reset : &churn_connect_errors);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN))) return;
        c->reading = 1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    for (;;) {
        ssize_t r = recv(c->fd, c->buf + c->got, sizeof c->buf - 1 - c->got, 0);
        if (r > 0) {
            c->got += (size_t)r;
            c->buf[c->got] = 0;
            char *nl = memchr(c->buf, '\n', c->got);
            if (nl) {
                uint64_t t = now_ns();
                if (strstr(c->buf, "Server full")) {
                    churn_end(c, &churn_full);
                } else if (!strstr(c->buf, "Welcome")) {
                    churn_end(c, &churn_bad_greeting);
                } else {
                    churn_done_total++;
                    if (c->t0 >= t_measure && t <= t_end) {
                        churn_done_window++;
                        hist_add((t - c->t0) / 1000);
                    }
                    churn_end(c, NULL); /* a plain close(): FIN, nothing unread */
                }
                return;
            }
            if (c->got >= sizeof c->buf - 1) {
                churn_end(c, &churn_bad_greeting);
                return;
            }
            continue;
        }
        if (r == 0) {
            churn_end(c, &churn_early_close);
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        churn_end(c, errno == ECONNRESET ? &churn_reset : &churn_connect_errors);
        return;
    }
}

static int run_churn(void) {
    int n = opt_conns;
    churn_t *cs = calloc((size_t)n, sizeof(churn_t));
    t_start = now_ns();
    t_measure = t_start + (uint64_t)(opt_warmup * 1e9);
    t_end = t_measure + (uint64_t)(opt_duration * 1e9);
    for (int i = 0; i < n; i++) churn_start(&cs[i]);
    uint64_t drain_end = t_end + 2000000000ull; /* let the last clients finish, 2 s at most */
    for (;;) {
        uint64_t t = now_ns();
        int running = t < t_end;
        int active = 0;
        for (int i = 0; i < n; i++) {
            churn_t *c = &cs[i];
            if (c->fd >= 0 && t - c->t0 > CHURN_TIMEOUT_NS) churn_end(c, &churn_timeouts);
            if (c->fd < 0 && running) churn_start(c);
            active += c->fd >= 0;
        }
        if (!running && (active == 0 || t > drain_end)) break;
        int k = epoll_wait(ep, events, 1024, 10);
        for (int i = 0; i < k; i++) {
            churn_t *c = events[i].data.ptr;
            if (c->fd >= 0) churn_event(c, events[i].events);
        }
        /* start replacements at once, not only on the next pass */
        if (running)
            for (int i = 0; i < k; i++) {
                churn_t *c = events[i].data.ptr;
                if (c->fd < 0) churn_start(c);
            }
    }
    int unfinished = 0;
    for (int i = 0; i < n; i++) {
        if (cs[i].fd >= 0) {
            churn_end(&cs[i], NULL);
            unfinished++;
        }
    }
    uint64_t errors = churn_refused + churn_reset + churn_connect_errors + churn_early_close +
                      churn_timeouts + churn_bad_greeting + churn_full + (uint64_t)unfinished;
    printf("{\"mode\": \"churn\", \"conns\": %d, \"duration\": %.3f, \"warmup\": %.3f, "
           "\"connections\": %llu, \"connections_total\": %llu, \"started\": %llu, "
           "\"conns_per_sec\": %.1f, \"p50_us\": %llu, \"p99_us\": %llu, \"p999_us\": %llu, "
           "\"errors\": %llu, \"refused\": %llu, \"reset\": %llu, \"connect_errors\": %llu, "
           "\"closed_early\": %llu, \"timeouts\": %llu, \"bad_greeting\": %llu, "
           "\"server_full\": %llu, \"unfinished\": %d}\n",
           n, opt_duration, opt_warmup, (unsigned long long)churn_done_window,
           (unsigned long long)churn_done_total, (unsigned long long)churn_started,
           (double)churn_done_window / opt_duration, (unsigned long long)hist_pct(50),
           (unsigned long long)hist_pct(99), (unsigned long long)hist_pct(99.9),
           (unsigned long long)errors, (unsigned long long)churn_refused,
           (unsigned long long)churn_reset, (unsigned long long)churn_connect_errors,
           (unsigned long long)churn_early_close, (unsigned long long)churn_timeouts,
           (unsigned long long)churn_bad_greeting, (unsigned long long)churn_full, unfinished);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (!strcmp(argv[1], "echo")) mode = MODE_ECHO;
    else if (!strcmp(argv[1], "chat")) mode = MODE_CHAT;
    else if (!strcmp(argv[1], "idle")) mode = MODE_IDLE;
    else if (!strcmp(argv[1], "churn")) mode = MODE_CHURN;
    else usage();
    parse_args(argc, argv);
    if (opt_conns < 0)
        opt_conns = mode == MODE_ECHO    ? 100
                    : mode == MODE_CHAT  ? 500
                    : mode == MODE_CHURN ? 50
                                         : 10000;
    raise_nofile();
    for (size_t i = 0; i < sizeof payload_fill; i++) payload_fill[i] = (char)('a' + i % 26);
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &target.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 host %s\n", opt_host);
        return 2;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    nconns = opt_conns;
    conns = calloc((size_t)nconns, sizeof(conn_t));
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].id = i;
        conns[i].state = ST_IDLE;
    }
    switch (mode) {
    case MODE_ECHO: return run_echo();
    case MODE_CHAT: return run_chat();
    case MODE_CHURN: return run_churn();
    default: return run_idle();
    }
}
