/* fhload: the bench's load generator (subscribers and publisher), one epoll loop, one core.
 *
 * Subscribers: WebSocket (firehose /ws or Buildbot's /ws: same framing, different first
 * command), SSE (HTTP/1.0 stream) or long-poll (HTTP/1.1 keep-alive).  Every delivered event
 * carries a timestamp (the value after "<ts-key>":, epoch seconds, CLOCK_REALTIME) written by
 * the publisher; latency = receive time - that value.
 *
 * Publisher (optional, same loop): POSTs build events to /ingest in batches, one request in
 * flight per master connection, like the Buildbot plugin's outbox.  Either at a set rate
 * (events generated at --pub-rate per second, flushed every --pub-interval seconds, by the first
 * master), unbatched (--pub-single 1: every one of --pub-conns masters POSTs ONE event per
 * request, at --pub-rate / --pub-conns events/s each, staggered, keep-alive), or flooding
 * (--pub-flood B: a batch of B as soon as the previous one is acknowledged, every master).
 * The time from each POST to its answer goes into its own histogram (pub_ack_p50_ms ...).
 *
 * Control on stdin, one word a line: "mark" starts a measurement window (counters reset),
 * "report" prints the window's counters as one JSON line, "quit" exits.  "READY <n>" is printed
 * once every subscriber is subscribed.  Every loop is bounded: --max-time ends the process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { M_WS, M_SSE, M_POLL, M_NONE };
enum { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_DEAD };
enum { K_SUB, K_PUB };

#define HIST_RES 0.00005 /* 50 us buckets */
#define HIST_N 400000    /* up to 20 s */
#define WORK_SZ (8 << 20)

typedef struct conn {
    int fd, kind, state, idx;
    int subscribed, noread;
    char *carry;
    size_t clen, ccap;
    /* poll */
    char since[96];
    /* pub */
    int inflight;
    long seq, sent_n;
    double sent_at, dead_at;
    int batch_n;
    char *out;
    size_t olen, ooff;
} conn;

static int mode = M_WS, port = 8080, nconns = 0, noread_n = 0, connect_window = 32;
static const char *sub_msg = "{\"cmd\":\"subscribe\"}";
static const char *path = "/ws", *query = "", *ts_key = "sent_at", *since0 = NULL, *incarnation = NULL;
static double max_time = 60, pub_rate = 0, pub_interval = 0.05, pub_delay = 0.5;
static int pub_conns = 1, pub_flood = 0, pub_single = 0, pub_batch_max = 1000, noread_rcvbuf = 4096, event_bytes = 700;
static long expect = 0;
static int epfd;
static conn *conns;
static int total;
static char *work;
static char tskey_pat[64];
static size_t tskey_len;

/* counters, reset by "mark" */
static long deliveries, errors, closed_n, gaps, polls, pub_events, pub_batches, pub_acked, pub_errors, pub_late;
static long all_deliveries, ws_other, pub_answers, pub_reconnects, pub_backlog_max;
static double pub_ack_sum, pub_ack_max;
static uint32_t *hist, *ack_hist;
static double lat_max, mark_t, t0, expect_done_t;
static int ready_printed, subscribed_n, connecting_n, next_connect, pub_started;
static double pub_t0;
static long pub_generated_sent;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *m) {
    perror(m);
    exit(2);
}

static void reset_counters(void) {
    deliveries = errors = closed_n = gaps = polls = pub_events = pub_batches = pub_acked = pub_errors = pub_late = 0;
    ws_other = pub_answers = pub_reconnects = pub_backlog_max = 0;
    pub_ack_sum = pub_ack_max = 0;
    memset(hist, 0, sizeof(uint32_t) * HIST_N);
    memset(ack_hist, 0, sizeof(uint32_t) * HIST_N);
    lat_max = 0;
    mark_t = now();
}

static double hpct(const uint32_t *h, long n, double q, double maxv) {
    if (n <= 0) return -1;
    long want = (long)ceil(q * n), acc = 0;
    if (want < 1) want = 1;
    for (int i = 0; i < HIST_N; i++) {
        acc += h[i];
        if (acc >= want) return (i + 0.5) * HIST_RES * 1000.0;
    }
    return maxv * 1000.0;
}

static double pct(long n, double q) { return hpct(hist, n, q, lat_max); }

static double ack_pct(double q) { return hpct(ack_hist, pub_answers, q, pub_ack_max); }

static void report(void) {
    double el = now() - mark_t;
    long open_n = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != S_DEAD) open_n++;
    printf("{\"elapsed\":%.4f,\"deliveries\":%ld,\"rate\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"p999_ms\":%.3f,\"max_ms\":%.3f,\"errors\":%ld,\"closed\":%ld,\"gaps\":%ld,\"polls\":%ld,"
           "\"poll_rate\":%.1f,\"open\":%ld,\"subscribed\":%d,\"pub_events\":%ld,\"pub_rate\":%.1f,"
           "\"pub_batches\":%ld,\"pub_acked\":%ld,\"pub_acked_rate\":%.1f,\"pub_errors\":%ld,\"pub_late\":%ld,"
           "\"all_deliveries\":%ld,\"expect_elapsed\":%.4f,\"pub_ack_avg_ms\":%.3f,\"pub_ack_max_ms\":%.3f,"
           "\"pub_answers\":%ld,\"pub_answer_rate\":%.1f,\"pub_ack_p50_ms\":%.3f,\"pub_ack_p99_ms\":%.3f,"
           "\"pub_reconnects\":%ld,\"pub_backlog_max\":%ld}\n",
           el, deliveries, deliveries / el, pct(deliveries, 0.5), pct(deliveries, 0.9), pct(deliveries, 0.99),
           pct(deliveries, 0.999), lat_max * 1000.0, errors, closed_n, gaps, polls, polls / el, open_n,
           subscribed_n, pub_events, pub_events / el, pub_batches, pub_acked, pub_acked / el, pub_errors, pub_late,
           all_deliveries, expect_done_t > 0 ? expect_done_t - t0 : -1.0,
           pub_answers ? pub_ack_sum * 1000.0 / pub_answers : -1.0, pub_ack_max * 1000.0, pub_answers,
           pub_answers / el, ack_pct(0.5), ack_pct(0.99), pub_reconnects, pub_backlog_max);
    fflush(stdout);
}

static void record(double sent) {
    double lat = now() - sent;
    if (lat < 0) lat = 0;
    if (lat > lat_max) lat_max = lat;
    long b = (long)(lat / HIST_RES);
    if (b >= HIST_N) b = HIST_N - 1;
    hist[b]++;
    deliveries++;
    all_deliveries++;
    if (expect && all_deliveries >= expect && expect_done_t == 0) {
        expect_done_t = now();
        report();
    }
}

/* Count every timestamp key in [p, p+n): one per event. */
static void scan_events(const char *p, size_t n) {
    const char *end = p + n;
    while (p < end) {
        const char *k = memmem(p, end - p, tskey_pat, tskey_len);
        if (!k) break;
        const char *v = k + tskey_len;
        char tmp[40];
        size_t m = 0;
        while (v + m < end && m < sizeof tmp - 1 && (v[m] == '.' || v[m] == '-' || v[m] == 'e' || v[m] == '+' ||
                                                      (v[m] >= '0' && v[m] <= '9')))
            m++;
        memcpy(tmp, v, m);
        tmp[m] = 0;
        record(strtod(tmp, NULL));
        p = v + m;
    }
}

static void carry_set(conn *c, const char *p, size_t n) {
    if (n > c->ccap) {
        c->ccap = n + 4096;
        c->carry = realloc(c->carry, c->ccap);
        if (!c->carry) die("realloc");
    }
    memmove(c->carry, p, n);
    c->clen = n;
}

static void conn_close(conn *c, int err) {
    if (c->state == S_DEAD) return;
    if (c->kind == K_SUB && !c->subscribed) connecting_n--;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = S_DEAD;
    c->dead_at = now();
    if (c->kind == K_PUB && c->inflight) {
        c->inflight = 0; /* the request in flight is lost: an error, the master reconnects */
        pub_errors++;
    }
    if (err) errors++;
    else closed_n++;
    free(c->carry);
    c->carry = NULL;
    c->clen = c->ccap = 0;
}

static int send_all(conn *c, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                /* small control writes only; the kernel buffer is never full for them */
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL);
                continue;
            }
            return -1;
        }
        p += w;
        n -= w;
    }
    return 0;
}

static void ws_send_text(conn *c, const char *msg, int opcode) {
    size_t n = strlen(msg);
    char buf[1024];
    size_t h = 0;
    buf[h++] = (char)(0x80 | opcode);
    if (n < 126) buf[h++] = (char)(0x80 | n);
    else {
        buf[h++] = (char)(0x80 | 126);
        buf[h++] = (char)(n >> 8);
        buf[h++] = (char)(n & 0xff);
    }
    unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(buf + h, mask, 4);
    h += 4;
    if (n + h > sizeof buf) n = sizeof buf - h;
    for (size_t i = 0; i < n; i++) buf[h + i] = msg[i] ^ mask[i & 3];
    if (send_all(c, buf, h + n) < 0) conn_close(c, 1);
}

static void mark_subscribed(conn *c) {
    if (c->subscribed) return;
    c->subscribed = 1;
    subscribed_n++;
    connecting_n--;
    if (c->noread) {
        struct epoll_event ev = {.events = 0, .data.u32 = c->idx};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void start_connect(conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c->noread) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &noread_rcvbuf, sizeof noread_rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = fd;
    c->state = S_CONNECTING;
    if (c->kind == K_SUB) connecting_n++;
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    if (r < 0 && errno != EINPROGRESS) {
        conn_close(c, 1);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = c->idx};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void send_poll(conn *c) {
    char req[1024];
    int n;
    if (c->since[0])
        n = snprintf(req, sizeof req, "GET /poll?since=%s&timeout=30&limit=1000%s%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                     c->since, query[0] ? "&" : "", query);
    else
        n = snprintf(req, sizeof req, "GET /poll?timeout=30&limit=1000%s%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                     query[0] ? "&" : "", query);
    if (send_all(c, req, n) < 0) conn_close(c, 1);
}

static void on_connected(conn *c) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = c->idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->state = S_HANDSHAKE;
    if (c->kind == K_PUB) {
        c->state = S_OPEN;
        return;
    }
    char req[1024];
    int n;
    if (mode == M_WS)
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, port);
    else if (mode == M_SSE) {
        if (since0)
            n = snprintf(req, sizeof req, "GET %s?since=%s%s%s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path, since0,
                         query[0] ? "&" : "", query);
        else
            n = snprintf(req, sizeof req, "GET %s%s%s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path, query[0] ? "?" : "",
                         query);
    } else {
        if (since0) snprintf(c->since, sizeof c->since, "%s", since0);
        send_poll(c);
        if (c->state != S_DEAD) {
            c->state = S_OPEN;
            mark_subscribed(c);
        }
        return;
    }
    if (send_all(c, req, n) < 0) conn_close(c, 1);
}

/* ---- HTTP responses (long-poll answers and ingest acknowledgements) ---- */

/* If buf holds a whole response, return its total length and put the body in body and blen (the
 * body is de-chunked in place).  Return 0 if incomplete, -1 on a parse error. */
static long http_response(char *buf, size_t n, int *status, char **body, size_t *blen) {
    char *he = memmem(buf, n, "\r\n\r\n", 4);
    if (!he) return 0;
    size_t hlen = he + 4 - buf;
    if (n < 12 || memcmp(buf, "HTTP/1.", 7)) return -1;
    *status = atoi(buf + 9);
    char *cl = memmem(buf, hlen, "ontent-Length:", 14);
    if (!cl) cl = memmem(buf, hlen, "ontent-length:", 14);
    if (cl) {
        size_t len = strtoul(cl + 14, NULL, 10);
        if (n < hlen + len) return 0;
        *body = buf + hlen;
        *blen = len;
        return hlen + len;
    }
    /* chunked */
    char *p = buf + hlen, *end = buf + n, *out = buf + hlen;
    for (;;) {
        char *le = memmem(p, end - p, "\r\n", 2);
        if (!le) return 0;
        size_t sz = strtoul(p, NULL, 16);
        char *data = le + 2;
        if (sz == 0) {
            if (end - data < 2) return 0;
            *body = buf + hlen;
            *blen = out - (buf + hlen);
            return data + 2 - buf;
        }
        if ((size_t)(end - data) < sz + 2) return 0;
        memmove(out, data, sz);
        out += sz;
        p = data + sz + 2;
    }
}

static void on_pub_response(conn *c, char *body, size_t blen, int status) {
    c->inflight = 0;
    double ack = now() - c->sent_at;
    pub_answers++;
    pub_ack_sum += ack;
    if (ack > pub_ack_max) pub_ack_max = ack;
    long ab = (long)(ack / HIST_RES);
    if (ab < 0) ab = 0;
    if (ab >= HIST_N) ab = HIST_N - 1;
    ack_hist[ab]++;
    if (status == 200) {
        pub_acked += c->batch_n;
    } else {
        pub_errors++;
        if (pub_errors < 5) fprintf(stderr, "fhload: ingest answered %d: %.*s\n", status, (int)(blen > 300 ? 300 : blen), body);
    }
}

static void on_poll_response(conn *c, char *body, size_t blen, int status) {
    polls++;
    if (status != 200) {
        errors++;
        return;
    }
    scan_events(body, blen);
    if (memmem(body, blen, "\"gap\":", 6)) gaps++;
    /* the answer's cursor is the last "cursor":"..." in the body */
    char *p = body, *last = NULL, *end = body + blen;
    for (;;) {
        char *k = memmem(p, end - p, "\"cursor\":\"", 10);
        if (!k) break;
        last = k + 10;
        p = last;
    }
    if (last) {
        char *q = memchr(last, '"', end - last);
        if (q && q - last < (long)sizeof c->since) {
            memcpy(c->since, last, q - last);
            c->since[q - last] = 0;
        }
    }
    send_poll(c);
}

static void handle_http(conn *c, char *buf, size_t n) {
    size_t off = 0;
    while (off < n && c->state != S_DEAD) {
        int status;
        char *body;
        size_t blen;
        long used = http_response(buf + off, n - off, &status, &body, &blen);
        if (used < 0) {
            conn_close(c, 1);
            return;
        }
        if (used == 0) break;
        if (c->kind == K_PUB) on_pub_response(c, body, blen, status);
        else on_poll_response(c, body, blen, status);
        off += used;
    }
    if (c->state != S_DEAD) carry_set(c, buf + off, n - off);
}

/* ---- WebSocket ---- */

static void handle_ws(conn *c, char *buf, size_t n) {
    size_t off = 0;
    if (c->state == S_HANDSHAKE) {
        char *he = memmem(buf, n, "\r\n\r\n", 4);
        if (!he) {
            carry_set(c, buf, n);
            return;
        }
        if (n < 12 || memcmp(buf + 9, "101", 3)) {
            if (errors < 3) fprintf(stderr, "fhload: handshake refused: %.*s\n", (int)(n > 200 ? 200 : n), buf);
            conn_close(c, 1);
            return;
        }
        off = he + 4 - buf;
        c->state = S_OPEN;
        if (!strcmp(sub_msg, "FILTERED")) {
            /* subscriber i wants builder b<i % 20>: 5% of the publisher's events */
            char m[128];
            snprintf(m, sizeof m, "{\"cmd\":\"subscribe\",\"filter\":{\"builder\":\"b%02d\"}}", c->idx % 20);
            ws_send_text(c, m, 1);
        } else
            ws_send_text(c, sub_msg, 1);
        if (c->state == S_DEAD) return;
    }
    while (n - off >= 2) {
        unsigned char *p = (unsigned char *)buf + off;
        int op = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = ((uint64_t)p[2] << 8) | p[3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | p[2 + i];
            h = 10;
        }
        if (p[1] & 0x80) h += 4;
        if (n - off < h + len) break;
        char *pl = (char *)p + h;
        if (op == 1 || op == 0) {
            if (!c->subscribed) mark_subscribed(c);
            else {
                const char *k = memmem(pl, len, tskey_pat, tskey_len);
                if (k) scan_events(k, pl + len - k);
                else if (memmem(pl, len, "\"gap\"", 5)) gaps++;
                else ws_other++;
            }
        } else if (op == 9) {
            char pong[130];
            size_t m = len < 125 ? len : 125;
            memcpy(pong, pl, m);
            pong[m] = 0;
            ws_send_text(c, pong, 0xA);
        } else if (op == 8) {
            conn_close(c, 0);
            return;
        }
        off += h + len;
    }
    if (c->state != S_DEAD) carry_set(c, buf + off, n - off);
}

/* ---- SSE (HTTP/1.0: the body is the raw stream) ---- */

static void handle_sse(conn *c, char *buf, size_t n) {
    size_t off = 0;
    if (c->state == S_HANDSHAKE) {
        char *he = memmem(buf, n, "\r\n\r\n", 4);
        if (!he) {
            carry_set(c, buf, n);
            return;
        }
        if (n < 12 || memcmp(buf + 9, "200", 3)) {
            if (errors < 3) fprintf(stderr, "fhload: SSE refused: %.*s\n", (int)(n > 200 ? 200 : n), buf);
            conn_close(c, 1);
            return;
        }
        off = he + 4 - buf;
        c->state = S_OPEN;
        mark_subscribed(c);
    }
    /* process complete lines only */
    char *end = buf + n, *lastnl = NULL;
    for (char *q = end - 1; q >= buf + off; q--)
        if (*q == '\n') {
            lastnl = q;
            break;
        }
    if (!lastnl) {
        carry_set(c, buf + off, n - off);
        return;
    }
    size_t seg = lastnl + 1 - (buf + off);
    scan_events(buf + off, seg);
    const char *g = buf + off, *ge = buf + off + seg;
    while ((g = memmem(g, ge - g, "event: gap", 10))) {
        gaps++;
        g += 10;
    }
    carry_set(c, lastnl + 1, end - (lastnl + 1));
}

static void on_readable(conn *c) {
    size_t have = c->clen;
    if (have) memcpy(work, c->carry, have);
    ssize_t r = recv(c->fd, work + have, WORK_SZ - have, 0);
    if (r == 0) {
        conn_close(c, 0);
        return;
    }
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        conn_close(c, 1);
        return;
    }
    size_t n = have + r;
    c->clen = 0;
    if (c->kind == K_PUB || mode == M_POLL) handle_http(c, work, n);
    else if (mode == M_WS) handle_ws(c, work, n);
    else handle_sse(c, work, n);
}

/* ---- publisher ---- */

static const char *RESULTS[] = {"success", "warnings", "failure", "success", "success"};

static size_t make_event(char *p, size_t cap, conn *c, long seq, double ts) {
    int b = (int)(seq % 20);
    int r = (int)(seq % 5);
    char pad[1024];
    int head = snprintf(
        p, cap,
        "{\"master\":\"m%d\",\"incarnation\":\"%s-%d\",\"seq\":%ld,\"type\":\"build.finished\",\"time\":%.6f,"
        "\"data\":{\"buildid\":%ld,\"number\":%ld,\"builder\":\"b%02d\",\"builderid\":%d,\"worker\":\"worker-%d\","
        "\"result\":\"%s\",\"results\":%d,\"branch\":\"main\",\"project\":\"firehose\","
        "\"repository\":\"https://git.example.org/firehose.git\","
        "\"revision\":\"4d2c8e1f0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d\",\"started_at\":%.3f,\"complete_at\":%.3f,"
        "\"state\":\"build successful\",\"buildrequestid\":%ld,\"buildsetid\":%ld,\"workerid\":%d,"
        "\"tags\":[\"linux\",\"ci\"],\"url\":\"http://buildbot.example.org/#/builders/%d/builds/%ld\","
        "\"properties\":{\"owner\":\"alice\",\"got_revision\":\"4d2c8e1f0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d\","
        "\"buildnumber\":%ld,\"scheduler\":\"force\",\"reason\":\"bench\"},\"sent_at\":%.6f,\"pad\":\"",
        c->idx - nconns, incarnation, c->idx - nconns, seq, ts, seq, seq, b, b, (int)(seq % 7), RESULTS[r], r == 2 ? 2 : r == 1 ? 1 : 0,
        ts - 30, ts, seq, seq, (int)(seq % 7), b, seq, seq, ts);
    int want = event_bytes - head - 3;
    if (want < 0) want = 0;
    if (want > (int)sizeof pad - 1) want = sizeof pad - 1;
    memset(pad, 'x', want);
    pad[want] = 0;
    return head + snprintf(p + head, cap - head, "%s\"}}", pad);
}

static void pub_send(conn *c, int nev) {
    size_t cap = (size_t)nev * (event_bytes + 1200) + 512;
    char *body = malloc(cap);
    size_t bl = 0;
    double ts = now();
    body[bl++] = '[';
    for (int i = 0; i < nev; i++) {
        if (i) body[bl++] = ',';
        bl += make_event(body + bl, cap - bl, c, ++c->seq, ts);
    }
    body[bl++] = ']';
    char hdr[512];
    int hl = snprintf(hdr, sizeof hdr,
                      "POST /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t%d\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      c->idx - nconns, bl);
    c->inflight = 1;
    c->sent_at = ts;
    c->batch_n = nev;
    pub_events += nev;
    pub_batches++;
    int fail = send_all(c, hdr, hl) < 0 || send_all(c, body, bl) < 0;
    free(body);
    if (fail) conn_close(c, 1);
}

static int npub_n;

static void pub_tick(void) {
    if (!pub_started) return;
    double t = now();
    static double last_flush;
    for (int i = nconns; i < total; i++) {
        conn *c = &conns[i];
        if (c->state == S_DEAD && t - c->dead_at > 0.02) {
            /* the server closed the keep-alive connection (or the first connect): reconnect,
             * as the plugin's outbox does */
            if (c->dead_at > 0) pub_reconnects++;
            start_connect(c);
            continue;
        }
        if (c->state != S_OPEN || c->inflight) continue;
        if (pub_flood) {
            pub_send(c, pub_flood);
            continue;
        }
        if (pub_single) {
            /* master k of K: events due at (j - k/K) / (rate/K), j = 1, 2, ...; one per POST.  A
             * master more than a second (of its own rate) behind skips the excess (pub_late). */
            double per = pub_rate / npub_n;
            long due = (long)floor((t - pub_t0) * per + (double)(i - nconns) / npub_n) - c->sent_n;
            if (due <= 0) continue;
            if (due - 1 > pub_backlog_max) pub_backlog_max = due - 1; /* events due, not yet sent */
            long cap = per > 1 ? (long)per : 1;
            if (due > cap) {
                pub_late += due - cap;
                c->sent_n += due - cap;
            }
            c->sent_n++;
            pub_send(c, 1);
            continue;
        }
        if (i != nconns) continue; /* a set rate uses one master */
        long due = (long)((t - pub_t0) * pub_rate) - pub_generated_sent;
        if (due <= 0 || t - last_flush < pub_interval) continue;
        if (due > pub_batch_max) {
            pub_late += due - pub_batch_max;
            due = pub_batch_max;
        }
        last_flush = t;
        pub_generated_sent += due;
        pub_send(c, (int)due);
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: fhload --port P [--mode ws|sse|poll|none] [--conns N] [--noread N] [--path /ws] [--sub JSON]\n"
            "  [--query Q] [--since CURSOR] [--expect N] [--ts-key KEY] [--pub-rate R] [--pub-interval S]\n"
            "  [--pub-flood B] [--pub-conns K] [--pub-single 0|1] [--pub-batch-max B] [--event-bytes N]\n"
            "  [--max-time S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--mode")) mode = !strcmp(v, "ws") ? M_WS : !strcmp(v, "sse") ? M_SSE : !strcmp(v, "poll") ? M_POLL : M_NONE;
        else if (!strcmp(a, "--conns")) nconns = atoi(v);
        else if (!strcmp(a, "--noread")) noread_n = atoi(v);
        else if (!strcmp(a, "--path")) path = v;
        else if (!strcmp(a, "--sub")) sub_msg = v;
        else if (!strcmp(a, "--query")) query = v;
        else if (!strcmp(a, "--since")) since0 = v;
        else if (!strcmp(a, "--expect")) expect = atol(v);
        else if (!strcmp(a, "--ts-key")) ts_key = v;
        else if (!strcmp(a, "--pub-rate")) pub_rate = atof(v);
        else if (!strcmp(a, "--pub-interval")) pub_interval = atof(v);
        else if (!strcmp(a, "--pub-flood")) pub_flood = atoi(v);
        else if (!strcmp(a, "--pub-conns")) pub_conns = atoi(v);
        else if (!strcmp(a, "--pub-single")) pub_single = atoi(v);
        else if (!strcmp(a, "--pub-batch-max")) pub_batch_max = atoi(v);
        else if (!strcmp(a, "--pub-delay")) pub_delay = atof(v);
        else if (!strcmp(a, "--event-bytes")) event_bytes = atoi(v);
        else if (!strcmp(a, "--incarnation")) incarnation = v;
        else if (!strcmp(a, "--connect-window")) connect_window = atoi(v);
        else if (!strcmp(a, "--max-time")) max_time = atof(v);
        else usage();
    }
    if (mode == M_NONE) nconns = 0;
    int npub = (pub_rate > 0 || pub_flood > 0) ? pub_conns : 0;
    total = nconns + npub;
    npub_n = npub;
    snprintf(tskey_pat, sizeof tskey_pat, "\"%s\":", ts_key);
    tskey_len = strlen(tskey_pat);
    static char incbuf[64];
    if (!incarnation) {
        snprintf(incbuf, sizeof incbuf, "bench-%d-%ld", getpid(), (long)time(NULL));
        incarnation = incbuf;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)total + 16 > rl.rlim_cur) {
        fprintf(stderr, "fhload: need %d descriptors, limit %ld\n", total + 16, (long)rl.rlim_cur);
        return 2;
    }
    hist = calloc(HIST_N, sizeof(uint32_t));
    ack_hist = calloc(HIST_N, sizeof(uint32_t));
    work = malloc(WORK_SZ);
    conns = calloc(total ? total : 1, sizeof(conn));
    epfd = epoll_create1(0);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);
    for (int i = 0; i < total; i++) {
        conns[i].idx = i;
        conns[i].kind = i < nconns ? K_SUB : K_PUB;
        conns[i].noread = i < noread_n;
        conns[i].state = S_DEAD;
        conns[i].fd = -1;
    }
    t0 = now();
    reset_counters();
    /* subscribers connect within a window (the server's listen backlog); publishers once every
     * subscriber is subscribed (pub_tick), so no keep-alive connection idles through a long
     * connecting phase into the server's request deadline */
    struct epoll_event evs[512];
    char line[256];
    size_t linelen = 0;
    for (;;) {
        double t = now();
        if (t - t0 > max_time) {
            fprintf(stderr, "fhload: --max-time reached\n");
            report();
            break;
        }
        while (next_connect < nconns && connecting_n < connect_window) start_connect(&conns[next_connect++]);
        if (!ready_printed && next_connect == nconns && subscribed_n + errors >= nconns) {
            ready_printed = 1;
            printf("READY %d\n", subscribed_n);
            fflush(stdout);
            if (npub) {
                struct timespec ts = {(time_t)pub_delay, (long)((pub_delay - (time_t)pub_delay) * 1e9)};
                nanosleep(&ts, NULL);
                pub_started = 1;
                pub_t0 = now();
            }
        }
        pub_tick();
        int n = epoll_wait(epfd, evs, 512, 1);
        for (int i = 0; i < n; i++) {
            uint32_t id = evs[i].data.u32;
            if (id == 0xffffffffu) {
                ssize_t r = read(0, line + linelen, sizeof line - 1 - linelen);
                if (r == 0) goto out; /* stdin closed: the orchestrator is gone */
                if (r < 0) continue;
                linelen += r;
                line[linelen] = 0;
                char *nl;
                while ((nl = strchr(line, '\n'))) {
                    *nl = 0;
                    if (!strcmp(line, "mark")) reset_counters();
                    else if (!strcmp(line, "report")) report();
                    else if (!strcmp(line, "quit")) goto out;
                    memmove(line, nl + 1, strlen(nl + 1) + 1);
                    linelen = strlen(line);
                }
                if (linelen >= sizeof line - 1) linelen = 0;
                continue;
            }
            conn *c = &conns[id];
            if (c->state == S_DEAD) continue;
            if (c->state == S_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    if (errors < 3) fprintf(stderr, "fhload: connect: %s\n", strerror(err));
                    conn_close(c, 1);
                    continue;
                }
                if (evs[i].events & EPOLLOUT) on_connected(c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
    }
out:
    for (int i = 0; i < total; i++)
        if (conns[i].state != S_DEAD) close(conns[i].fd);
    return 0;
}
