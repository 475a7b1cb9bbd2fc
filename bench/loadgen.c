/*
 * loadgen: an open-loop HTTP/1.1 load generator at a fixed arrival rate.
 *
 * Closed-loop tools (wrk, ab) send the next request only when a connection is free,
 * so a slow server is offered less load and its tail latency hides (coordinated
 * omission). Here request i is due at start + i/rate whatever happens; its latency is
 * measured from that due time, so time spent waiting for a free connection counts.
 *
 * usage: loadgen HOST PORT RATE SECONDS CONNECTIONS REQUESTS_FILE
 * REQUESTS_FILE: complete HTTP requests, each preceded by its length as a 4-byte
 * little-endian integer; they are used in order and cycled.
 * Prints one line of key=value pairs: offered, completed, ok (body has "code":"0"),
 * errors, achieved rate, and latency percentiles in milliseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ 65536

typedef struct {
    int fd;
    int busy;
    double due;         /* when the request in flight was due */
    char buf[BUFSZ];
    size_t have;
} conn_t;

static char **reqs;
static uint32_t *req_len;
static size_t nreqs;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void load_requests(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror("requests file"); exit(2); }
    size_t cap = 1024;
    reqs = malloc(cap * sizeof *reqs);
    req_len = malloc(cap * sizeof *req_len);
    uint32_t len;
    while (fread(&len, 4, 1, f) == 1) {
        if (nreqs == cap) {
            cap *= 2;
            reqs = realloc(reqs, cap * sizeof *reqs);
            req_len = realloc(req_len, cap * sizeof *req_len);
        }
        reqs[nreqs] = malloc(len);
        if (fread(reqs[nreqs], 1, len, f) != len) { fprintf(stderr, "short file\n"); exit(2); }
        req_len[nreqs++] = len;
    }
    fclose(f);
    if (!nreqs) { fprintf(stderr, "no requests\n"); exit(2); }
}

static int open_conn(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); exit(2); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EAGAIN) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A complete response in c->buf? Returns its length, or 0 when more is needed. */
static size_t response_length(conn_t *c) {
    c->buf[c->have < BUFSZ ? c->have : BUFSZ - 1] = 0;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return 0;
    size_t head = (size_t)(end - c->buf) + 4;
    char *cl = strcasestr(c->buf, "content-length:");
    size_t body = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
    return c->have >= head + body ? head + body : 0;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS CONNECTIONS REQUESTS_FILE\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[5]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    load_requests(argv[6]);

    size_t total = (size_t)(rate * seconds);
    double *lat = malloc(total * sizeof *lat);
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    int ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = open_conn(host, port);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }

    size_t next = 0, done = 0, ok = 0, errors = 0;
    double start = now(), deadline = start + seconds + 30.0;
    struct epoll_event evs[256];
    while (done + errors < total && now() < deadline) {
        /* Send everything that is due, on free connections, oldest first. */
        double t = now();
        for (int i = 0; i < nconn && next < total && start + next / rate <= t; i++) {
            if (conns[i].busy) continue;
            size_t r = next % nreqs;
            conns[i].busy = 1;
            conns[i].due = start + next / rate;
            conns[i].have = 0;
            next++;
            if (send_all(conns[i].fd, reqs[r], req_len[r]) < 0) { errors++; conns[i].busy = 0; }
        }
        double wait = next < total ? start + next / rate - now() : 0.01;
        int timeout = wait > 0 ? (int)(wait * 1000) : 0;
        int n = epoll_wait(ep, evs, 256, timeout > 10 ? 10 : timeout);
        for (int k = 0; k < n; k++) {
            conn_t *c = &conns[evs[k].data.u32];
            ssize_t r = read(c->fd, c->buf + c->have, BUFSZ - 1 - c->have);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                errors += c->busy;
                c->busy = 0;
                close(c->fd);
                c->fd = open_conn(host, port);
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[k].data.u32};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                continue;
            }
            c->have += (size_t)r;
            size_t len = response_length(c);
            if (!len || !c->busy) continue;
            lat[done++] = (now() - c->due) * 1000.0;
            if (strstr(c->buf, "\"code\":\"0\"")) ok++;
            c->busy = 0;
            c->have = 0;
        }
    }
    double elapsed = now() - start;
    qsort(lat, done, sizeof *lat, cmp_double);
#define PCT(p) (done ? lat[(size_t)((p) / 100.0 * (done - 1))] : 0.0)
    printf("offered=%zu completed=%zu ok=%zu errors=%zu rate=%.1f "
           "p50=%.2f p90=%.2f p99=%.2f p999=%.2f max=%.2f\n",
           next, done, ok, errors, done / elapsed, PCT(50), PCT(90), PCT(99), PCT(99.9),
           done ? lat[done - 1] : 0.0);
    return 0;
}
