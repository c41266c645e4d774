/* drasyl.agent._fast: the agent's per-packet path for established peers, in C (issue 14).
 *
 * Optional accelerator (drasyl/native.py, setup.py); drasyl/agent/fast.py drives it and is the
 * only user. It does, for the common case only, what the Python data path does per packet:
 *
 *   TUN -> UDP  (Agent._on_tun_readable, NodeCore._send_app, send_transmits): read the TUN; an
 *     IPv4 packet that is not drasyl's own, whose (dst/32, src/32) the policy snapshot maps to
 *     a held peer with a direct path and a short id, is armed as a short-header APP
 *     (short id | R | tag | ciphertext, AD = short id) and sent from the path's socket
 *     (GSO for runs to one destination, as send_transmits);
 *   UDP -> TUN  (UdpSocket, NodeCore.receive_datagram, Agent._on_receive): recvmmsg; a datagram
 *     whose short id names a peer, that opens, fits the MTU, is IPv4 and not drasyl's own,
 *     passes the /32 anti-spoofing check and is no reply to drasyl-agent ping, is written to
 *     the TUN.
 *
 * The event loop calls C directly (Engine.tun_readable is the TUN fd's reader, Engine.udp_readable
 * the node sockets' one): the common packet costs no Python frame. After writing to the TUN, C
 * reads the TUN at once (a ping's reply or a TCP ACK is there already), as Agent._on_receive.
 *
 * Everything else is handed to the Python code unchanged, in order: at the first packet of a
 * burst that C does not take, it stops taking packets and leaves that one and all later ones
 * to Python (so no packet overtakes another). The peer state stays in the Python objects: C
 * reads NodePeer.best / tx_short_id / rx / public_key per packet (identity-checked caches for
 * what it derives from them) and writes app_tx / app_rx / bytes_in / bytes_out, so status,
 * metrics and the core's timers see exactly what the Python path would have left. Drops that
 * only C can see (TUN write errors, send failures, truncated datagrams) go to the same Python
 * counters. An unexpected Python error inside C is cleared and counted (`faults`); the packet
 * then goes to Python; an exception from a Python hook is counted and handed to on_fault (the
 * agent's rate-limited FaultLog). Nothing is logged here, the readers never raise.
 *
 * AEGIS-256X2 comes from libaegis through aeg's cffi module (addresses from
 * drasyl.native.aegis_functions), with drasyl-rs' swap: key = the random R sent in clear,
 * nonce = the session key (drasyl/crypto.py). R comes from a getrandom pool that a forked
 * child drops (pthread_atfork), as in drasyl/crypto.py. Everything runs holding the GIL: all
 * file descriptors are non-blocking.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../native.h"
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define SID_LEN 4
#define R_LEN 32
#define TAG_LEN 16
#define OVERHEAD (R_LEN + TAG_LEN)
#define SHORT_HEADER (SID_LEN + OVERHEAD)
#define SLOT 2048            /* drasyl.net.mmsg.SLOT: a datagram of this size came truncated */
#define BATCH 64             /* packets per burst, both directions */
#define GSO_MAX_SEGMENTS 64  /* drasyl.net.udp */
#define GSO_MAX_BYTES 65000
#define GSO_STRIKES 3
#define MAGIC 0x1E3F5001u
#define PROTO_ICMP 1
#define PROTO_UDP 17
#define ICMP_ECHO_REPLY 0
#define PING_TOKEN 8

/* --- interned attribute names ----------------------------------------------------------------- */

static PyObject *s_best, *s_tx_short_id, *s_rx, *s_tx, *s_public_key, *s_local, *s_remote, *s_send_sockets,
    *s_closed, *s_short_ids, *s_app_tx, *s_app_rx, *s_bytes_in, *s_bytes_out, *s_send_drops,
    *s_gso, *s_gso_strikes, *s_sock, *s_fileno, *s_family, *s_fd, *s_deliver, *s_recv_truncated;

/* --- a small open-addressing hash: 64-bit key -> int32 value ----------------------------------- */

typedef struct {
    uint64_t *keys;
    int32_t *values; /* -1: empty */
    size_t mask;
} Table;

static void table_free(Table *t) {
    PyMem_Free(t->keys);
    PyMem_Free(t->values);
    t->keys = NULL;
    t->values = NULL;
    t->mask = 0;
}

static inline size_t hash64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

static int table_init(Table *t, size_t n) {
    size_t cap = 8;
    while (cap < 2 * n + 1)
        cap <<= 1;
    t->keys = PyMem_Malloc(cap * sizeof(uint64_t));
    t->values = PyMem_Malloc(cap * sizeof(int32_t));
    if (t->keys == NULL || t->values == NULL) {
        table_free(t);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < cap; i++)
        t->values[i] = -1;
    t->mask = cap - 1;
    return 0;
}

static void table_put(Table *t, uint64_t key, int32_t value) {
    size_t i = hash64(key) & t->mask;
    while (t->values[i] >= 0 && t->keys[i] != key)
        i = (i + 1) & t->mask;
    t->keys[i] = key;
    t->values[i] = value;
}

static inline int32_t table_get(const Table *t, uint64_t key) {
    if (t->values == NULL)
        return -1;
    size_t i = hash64(key) & t->mask;
    while (t->values[i] >= 0) {
        if (t->keys[i] == key)
            return t->values[i];
        i = (i + 1) & t->mask;
    }
    return -1;
}

/* --- per-peer state: the handle, and what C derived from its best path and short id ------------ */

typedef struct {
    PyObject *handle;             /* the NodePeer (a send handle the agent holds) */
    PyObject *best, *sid, *sockets; /* the objects the cache below was derived from; NULL: none */
    PyObject *udp;                /* the drasyl.net.udp.UdpSocket of best.local */
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint8_t sidb[SID_LEN];
    uint8_t txkey[32];
    int has_key;
    uint64_t pending;             /* bytes_out of this burst, written back at its end */
    int touched;
} Peer;

typedef struct {
    int32_t peer;                 /* index into Engine.peers */
    uint16_t len;
    uint16_t off;                 /* slot index in Engine.out */
} Datagram;

typedef struct {
    PyObject_HEAD
    aegis_encrypt_fn enc;
    aegis_decrypt_fn dec;
    PyObject *node, *core;        /* the drasyl Node and its NodeCore */
    PyObject *on_tun_error;       /* callable(what, errno): a TUN read or write failed */
    PyObject *on_tun_rest;        /* callable(n, err, oversize): the TUN packets C left in the slots */
    PyObject *on_fault;           /* callable(exception): a Python hook raised (logged rate-limited) */
    int tun_fd, mtu, max_payload;
    Py_buffer arena;              /* the TUN queue's slots (arena.obj NULL: no TUN) */
    Py_ssize_t slot_size;
    PyObject *lengths;            /* the TUN queue's lengths list */
    int ping_set;
    uint16_t ping_ident;
    uint8_t ping_token[PING_TOKEN];
    Table tx, rx;                 /* (dst << 32 | src) -> peer; (src << 32 | dst) -> expected sender */
    Peer *peers;
    Py_ssize_t npeers;
    uint8_t (*rx_keys)[32];       /* expected senders' public keys */
    uint8_t *out;                 /* BATCH datagrams of SLOT bytes, armed, waiting for the flush */
    Datagram queue[BATCH];
    int queued;
    uint8_t *rxbuf;               /* BATCH receive slots */
    struct mmsghdr rxmsgs[BATCH];
    struct iovec rxiov[BATCH];
    struct sockaddr_storage rxnames[BATCH];
    uint8_t plain[SLOT];
    unsigned long long tx_packets, rx_packets, faults;
} Engine;

static long long monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic_ns() on Linux: drasyl.clock */
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* A Python error inside the data path: cleared and counted; the packet goes to Python. */
static void fault(Engine *e) {
    PyErr_Clear();
    e->faults++;
}

/* drasyl.tun.packet.is_ipv4, and not is_drasyl_control (which the Python path hands on). */
static int plain_ipv4(const uint8_t *p, size_t n) {
    if (n < 20 || p[0] >> 4 != 4)
        return 0;
    size_t ihl = (size_t)(p[0] & 0x0F) * 4;
    if (ihl < 20 || n < ihl)
        return 0;
    if (p[9] == PROTO_UDP && (be16(p + 6) & 0x1FFF) == 0 && n >= ihl + 8 + 4 && be32(p + ihl + 8) == MAGIC)
        return 0;
    return 1;
}

/* Pinger.take_reply would take it: an echo reply with our identifier and token. */
static int ping_reply(const Engine *e, const uint8_t *p, size_t n) {
    if (!e->ping_set || p[9] != PROTO_ICMP)
        return 0;
    size_t at = (size_t)(p[0] & 0x0F) * 4;
    return n >= at + 8 + PING_TOKEN && p[at] == ICMP_ECHO_REPLY && be16(p + at + 4) == e->ping_ident
        && memcmp(p + at + 8, e->ping_token, PING_TOKEN) == 0;
}

/* Adds ``delta`` to an int attribute (a counter); -1 with an exception set on failure. */
static int add_attr(PyObject *obj, PyObject *name, long long delta) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    long long old = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (old == -1 && PyErr_Occurred())
        return -1;
    PyObject *nv = PyLong_FromLongLong(old + delta);
    if (nv == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, nv);
    Py_DECREF(nv);
    return r;
}

static int set_int_attr(PyObject *obj, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

/* A Python hook raised: counted, and handed to on_fault (FaultLog: logged at most every 10 s). */
static void hook_failed(Engine *e) {
    e->faults++;
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc != NULL && tb != NULL)
        PyException_SetTraceback(exc, tb);
    PyObject *r = exc != NULL ? PyObject_CallOneArg(e->on_fault, exc) : NULL;
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
}

static void count_send_drops(Engine *e, PyObject *udp, long long n) {
    if (n > 0 && add_attr(udp, s_send_drops, n) < 0)
        fault(e);
}

static void tun_error(Engine *e, const char *what, int err) {
    PyObject *r = PyObject_CallFunction(e->on_tun_error, "si", what, err);
    if (r == NULL)
        fault(e);
    Py_XDECREF(r);
}

/* --- peers' cached paths ----------------------------------------------------------------------- */

static void peer_forget(Peer *p) {
    Py_CLEAR(p->best);
    Py_CLEAR(p->sid);
    Py_CLEAR(p->sockets);
    Py_CLEAR(p->udp);
}

/* ``remote`` (a socket-module address tuple) as a sockaddr of ``family``: mmsg.AddressCache._encode. */
static int to_sockaddr(PyObject *remote, int family, struct sockaddr_storage *out, socklen_t *len) {
    if (!PyTuple_Check(remote) || PyTuple_GET_SIZE(remote) < 2)
        return -1;
    const char *host = PyUnicode_Check(PyTuple_GET_ITEM(remote, 0)) ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(remote, 0))
                                                                     : NULL;
    long port = PyLong_Check(PyTuple_GET_ITEM(remote, 1)) ? PyLong_AsLong(PyTuple_GET_ITEM(remote, 1)) : -1;
    if (host == NULL || port < 0 || port > 65535) {
        PyErr_Clear();
        return -1;
    }
    memset(out, 0, sizeof(*out));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)out;
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return -1;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *len = sizeof(*a);
        return 0;
    }
    if (family != AF_INET6 || strchr(host, '%') != NULL) /* scoped names: left to Python */
        return -1;
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
        return -1;
    Py_ssize_t size = PyTuple_GET_SIZE(remote);
    unsigned long flow = size > 2 ? PyLong_AsUnsignedLong(PyTuple_GET_ITEM(remote, 2)) : 0;
    unsigned long scope = size > 3 ? PyLong_AsUnsignedLong(PyTuple_GET_ITEM(remote, 3)) : 0;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    a->sin6_flowinfo = htonl((uint32_t)flow);
    a->sin6_scope_id = (uint32_t)scope;
    *len = sizeof(*a);
    return 0;
}

/* Derive fd, destination and short id from the peer's best path and the node's sockets; 0 when
 * C can send to it (a direct path on a socket the node has, a short id), else -1 (Python sends). */
static int peer_refresh(Engine *e, Peer *p, PyObject *best, PyObject *sid, PyObject *sockets) {
    peer_forget(p);
    if (!PyBytes_Check(sid) || PyBytes_GET_SIZE(sid) != SID_LEN || !PyDict_Check(sockets))
        return -1;
    PyObject *local = PyObject_GetAttr(best, s_local);
    if (local == NULL)
        goto fault;
    PyObject *udp = PyDict_GetItemWithError(sockets, local); /* borrowed */
    Py_DECREF(local);
    if (udp == NULL) {
        if (PyErr_Occurred())
            goto fault;
        return -1; /* send_transmits drops it silently: Python does that */
    }
    p->udp = Py_NewRef(udp);
    PyObject *sock = PyObject_GetAttr(udp, s_sock);
    if (sock == NULL)
        goto fault;
    PyObject *fdo = PyObject_CallMethodNoArgs(sock, s_fileno);
    PyObject *fam = PyObject_GetAttr(sock, s_family);
    Py_DECREF(sock);
    long fd = fdo != NULL ? PyLong_AsLong(fdo) : -1;
    long family = fam != NULL ? PyLong_AsLong(fam) : -1;
    Py_XDECREF(fdo);
    Py_XDECREF(fam);
    if (PyErr_Occurred())
        goto fault;
    PyObject *remote = fd >= 0 ? PyObject_GetAttr(best, s_remote) : NULL;
    if (remote == NULL) {
        if (PyErr_Occurred())
            goto fault;
        peer_forget(p);
        return -1;
    }
    int bad = to_sockaddr(remote, (int)family, &p->addr, &p->addrlen);
    Py_DECREF(remote);
    if (bad) {
        peer_forget(p);
        return -1;
    }
    memcpy(p->sidb, PyBytes_AS_STRING(sid), SID_LEN);
    p->fd = (int)fd;
    p->best = Py_NewRef(best);
    p->sid = Py_NewRef(sid);
    p->sockets = Py_NewRef(sockets);
    return 0;
fault:
    fault(e);
    peer_forget(p);
    return -1;
}

/* The peer if C may send to it now (best path and short id as cached), else NULL. */
static Peer *sendable(Engine *e, int32_t index, PyObject *sockets) {
    Peer *p = &e->peers[index];
    if (!p->has_key)
        return NULL;
    PyObject *best = PyObject_GetAttr(p->handle, s_best);
    if (best == NULL) {
        fault(e);
        return NULL;
    }
    PyObject *sid = PyObject_GetAttr(p->handle, s_tx_short_id);
    if (sid == NULL) {
        Py_DECREF(best);
        fault(e);
        return NULL;
    }
    int ok = best != Py_None && sid != Py_None
        && ((p->best == best && p->sid == sid && p->sockets == sockets) || peer_refresh(e, p, best, sid, sockets) == 0);
    Py_DECREF(best);
    Py_DECREF(sid);
    return ok ? p : NULL;
}

/* --- sending: what send_transmits does with the outbox, for UDP datagrams ----------------------- */

static int same_dest(const Peer *a, const Peer *b) {
    return a->fd == b->fd && a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

/* UdpSocket.send: one sendto (retried after a signal, as Python does); 0 when it failed. */
static int send_one(const Peer *p, const uint8_t *data, size_t len) {
    ssize_t r;
    do
        r = sendto(p->fd, data, len, 0, (const struct sockaddr *)&p->addr, p->addrlen);
    while (r < 0 && errno == EINTR);
    return r >= 0;
}

/* Batcher._flush: sendmmsg, a partial send goes on, an error skips one, a full buffer drops the rest. */
static long long send_many(int fd, struct mmsghdr *msgs, int count) {
    long long drops = 0;
    int sent = 0;
    while (sent < count) {
        int n = sendmmsg(fd, msgs + sent, (unsigned)(count - sent), 0);
        if (n > 0) {
            sent += n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
            return drops + count - sent;
        drops++;
        sent++;
    }
    return drops;
}

/* UdpSocket.send_batch of queue[i..j) (one socket, singles): sendto for one, else sendmmsg. */
static void send_singles(Engine *e, int i, int j) {
    Peer *p = &e->peers[e->queue[i].peer];
    if (j - i == 1) {
        Datagram *d = &e->queue[i];
        if (!send_one(p, e->out + (size_t)d->off * SLOT, d->len))
            count_send_drops(e, p->udp, 1);
        return;
    }
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int k = i; k < j; k++) {
        Datagram *d = &e->queue[k];
        Peer *q = &e->peers[d->peer];
        iov[k - i].iov_base = e->out + (size_t)d->off * SLOT;
        iov[k - i].iov_len = d->len;
        memset(&msgs[k - i], 0, sizeof(msgs[k - i]));
        msgs[k - i].msg_hdr.msg_name = &q->addr;
        msgs[k - i].msg_hdr.msg_namelen = q->addrlen;
        msgs[k - i].msg_hdr.msg_iov = &iov[k - i];
        msgs[k - i].msg_hdr.msg_iovlen = 1;
    }
    count_send_drops(e, p->udp, send_many(p->fd, msgs, j - i));
}

/* UdpSocket.send_segments of queue[i..j): one GSO sendmsg, plain sends when GSO fails, and GSO
 * given up on the socket after GSO_STRIKES failures that plain sends did not share. */
static void send_segments(Engine *e, int i, int j) {
    Peer *p = &e->peers[e->queue[i].peer];
    PyObject *udp = p->udp;
    PyObject *gso = PyObject_GetAttr(udp, s_gso);
    int use_gso = gso != NULL && PyObject_IsTrue(gso) == 1;
    Py_XDECREF(gso);
    if (PyErr_Occurred())
        fault(e);
    long long drops = 0;
    if (use_gso) {
        struct iovec iov[BATCH];
        for (int k = i; k < j; k++) {
            iov[k - i].iov_base = e->out + (size_t)e->queue[k].off * SLOT;
            iov[k - i].iov_len = e->queue[k].len;
        }
        union {
            char buf[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } control;
        memset(&control, 0, sizeof(control));
        struct msghdr msg = {0};
        msg.msg_name = &p->addr;
        msg.msg_namelen = p->addrlen;
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)(j - i);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = e->queue[i].len;
        memcpy(CMSG_DATA(c), &size, sizeof(size));
        ssize_t r;
        do
            r = sendmsg(p->fd, &msg, 0);
        while (r < 0 && errno == EINTR);
        if (r >= 0) {
            if (set_int_attr(udp, s_gso_strikes, 0) < 0)
                fault(e);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EALREADY || errno == EINPROGRESS) {
            count_send_drops(e, udp, j - i); /* BlockingIOError */
            return;
        }
    }
    int sent = 0;
    for (int k = i; k < j; k++) {
        Datagram *d = &e->queue[k];
        if (send_one(p, e->out + (size_t)d->off * SLOT, d->len))
            sent++;
        else
            drops++;
    }
    count_send_drops(e, udp, drops);
    if (use_gso && sent) {
        PyObject *v = PyObject_GetAttr(udp, s_gso_strikes);
        long strikes = v != NULL ? PyLong_AsLong(v) + 1 : 0;
        Py_XDECREF(v);
        if (PyErr_Occurred() || set_int_attr(udp, s_gso_strikes, strikes) < 0
            || (strikes >= GSO_STRIKES && PyObject_SetAttr(udp, s_gso, Py_False) < 0))
            fault(e);
    }
}

/* send_transmits over the queue: runs of equal-size datagrams to one destination (a shorter last
 * one allowed) as GSO, the others per socket in order. Then the burst's counters per peer. */
static void flush(Engine *e, long long now) {
    int n = e->queued, i = 0, singles = -1;
    while (i < n) {
        Peer *p = &e->peers[e->queue[i].peer];
        int size = e->queue[i].len, j = i + 1;
        int limit = i + (GSO_MAX_SEGMENTS < GSO_MAX_BYTES / size ? GSO_MAX_SEGMENTS : GSO_MAX_BYTES / size);
        while (j < n && j < limit && e->queue[j].len == size && same_dest(&e->peers[e->queue[j].peer], p))
            j++;
        if (j < n && j < limit && e->queue[j].len < size && same_dest(&e->peers[e->queue[j].peer], p))
            j++;
        if (j - i == 1) {
            if (singles >= 0 && e->peers[e->queue[singles].peer].udp != p->udp) {
                send_singles(e, singles, i);
                singles = -1;
            }
            if (singles < 0)
                singles = i;
        } else {
            if (singles >= 0) {
                send_singles(e, singles, i);
                singles = -1;
            }
            send_segments(e, i, j);
        }
        i = j;
    }
    if (singles >= 0)
        send_singles(e, singles, n);
    for (int k = 0; k < n; k++) {
        Peer *p = &e->peers[e->queue[k].peer];
        if (!p->touched)
            continue;
        p->touched = 0;
        if (set_int_attr(p->handle, s_app_tx, now) < 0 || add_attr(p->handle, s_bytes_out, (long long)p->pending) < 0)
            fault(e);
        p->pending = 0;
    }
    e->queued = 0;
}

/* One packet read from the TUN: armed and queued (1), or Python's (0). */
static int take_tx(Engine *e, const uint8_t *pkt, size_t n, PyObject *sockets) {
    if (n > (size_t)e->max_payload || !plain_ipv4(pkt, n))
        return 0;
    int32_t index = table_get(&e->tx, (uint64_t)be32(pkt + 16) << 32 | be32(pkt + 12));
    if (index < 0)
        return 0;
    Peer *p = sendable(e, index, sockets);
    if (p == NULL)
        return 0;
    uint8_t *out = e->out + (size_t)e->queued * SLOT;
    memcpy(out, p->sidb, SID_LEN);
    if (native_random(out + SID_LEN) < 0) {
        e->faults++;
        return 0;
    }
    /* key = R (sent in clear), nonce = the session key: drasyl-rs' swap (drasyl/crypto.py) */
    e->enc(out + SHORT_HEADER, out + SID_LEN + R_LEN, TAG_LEN, pkt, n, out, SID_LEN, p->txkey, out + SID_LEN);
    Datagram *d = &e->queue[e->queued];
    d->peer = (int32_t)(p - e->peers);
    d->len = (uint16_t)(n + SHORT_HEADER);
    d->off = (uint16_t)e->queued;
    e->queued++;
    p->pending += n;
    p->touched = 1;
    e->tx_packets++;
    return 1;
}

/* What TunQueue.read_batch and Agent._on_tun_readable do: read up to a batch of packets; those
 * C takes are sent, the first one it does not take and all after it go into the queue's slots
 * (lengths[i]) for Python, and on_tun_rest(n, err, oversize) gets them (err: the errno that
 * ended reading, oversize: packets over the MTU), unless all three are 0. */
static void tun_burst(Engine *e) {
    if (e->arena.obj == NULL)
        return;
    Py_ssize_t batch = PyList_GET_SIZE(e->lengths), slot_size = e->slot_size;
    if (batch > BATCH)
        batch = BATCH;
    PyObject *sockets = NULL;
    int taking = e->peers != NULL;
    if (taking) {
        PyObject *closed = PyObject_GetAttr(e->node, s_closed);
        sockets = PyObject_GetAttr(e->node, s_send_sockets);
        taking = closed == Py_False && sockets != NULL;
        Py_XDECREF(closed);
        if (PyErr_Occurred())
            fault(e);
    }
    Py_ssize_t n = 0, reads = 0;
    int err = 0, oversize = 0;
    uint8_t *base = e->arena.buf;
    long long now = monotonic_us();
    while (reads < batch) {
        uint8_t *slot = base + n * slot_size;
        ssize_t size = read(e->tun_fd, slot, (size_t)slot_size);
        if (size < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                err = errno;
            break;
        }
        reads++;
        if (size > e->mtu) { /* the slot is read into again */
            oversize++;
            continue;
        }
        if (taking && take_tx(e, slot, (size_t)size, sockets))
            continue; /* armed into the queue: the slot is free again */
        if (taking && e->queued)
            flush(e, now); /* what C took goes out before what Python sends */
        taking = 0;
        PyObject *len = PyLong_FromSsize_t(size);
        if (len == NULL) {
            fault(e);
            break;
        }
        PyList_SetItem(e->lengths, n, len);
        n++;
    }
    if (e->queued)
        flush(e, now);
    Py_XDECREF(sockets);
    if (n || err || oversize) {
        PyObject *r = PyObject_CallFunction(e->on_tun_rest, "nii", n, err, oversize);
        if (r == NULL)
            hook_failed(e);
        Py_XDECREF(r);
    }
}

/* Engine.tun_readable(): the TUN fd's reader (the event loop calls it; it never raises). */
static PyObject *Engine_tun_readable(Engine *e, PyObject *Py_UNUSED(ignored)) {
    tun_burst(e);
    Py_RETURN_NONE;
}

/* One received datagram: written to the TUN (1), or Python's (0). */
static int take_rx(Engine *e, const uint8_t *data, size_t len, PyObject *short_ids, long long now) {
    if (len < SHORT_HEADER || e->tun_fd < 0)
        return 0;
    PyObject *key = PyBytes_FromStringAndSize((const char *)data, SID_LEN);
    if (key == NULL) {
        fault(e);
        return 0;
    }
    PyObject *peer = PyDict_GetItemWithError(short_ids, key); /* borrowed */
    Py_DECREF(key);
    if (peer == NULL) {
        if (PyErr_Occurred())
            fault(e);
        return 0;
    }
    Py_INCREF(peer);
    int taken = 0;
    PyObject *rx = PyObject_GetAttr(peer, s_rx);
    PyObject *pk = rx != NULL ? PyObject_GetAttr(peer, s_public_key) : NULL;
    if (pk == NULL) {
        fault(e);
        goto done;
    }
    if (!PyBytes_Check(rx) || PyBytes_GET_SIZE(rx) != 32 || !PyBytes_Check(pk) || PyBytes_GET_SIZE(pk) != 32)
        goto done;
    size_t n = len - SHORT_HEADER;
    uint8_t *plain = e->plain;
    if (e->dec(plain, data + SHORT_HEADER, n, data + SID_LEN + R_LEN, TAG_LEN, data, SID_LEN,
               (const uint8_t *)PyBytes_AS_STRING(rx), data + SID_LEN) != 0)
        goto done; /* Python counts bad_short_app */
    if (n > (size_t)e->mtu || !plain_ipv4(plain, n) || ping_reply(e, plain, n))
        goto done;
    int32_t expected = table_get(&e->rx, (uint64_t)be32(plain + 12) << 32 | be32(plain + 16));
    if (expected < 0 || memcmp(e->rx_keys[expected], PyBytes_AS_STRING(pk), 32) != 0)
        goto done;
    if (set_int_attr(peer, s_app_rx, now) < 0 || add_attr(peer, s_bytes_in, (long long)n) < 0) {
        fault(e);
        goto done;
    }
    taken = 1;
    e->rx_packets++;
    ssize_t w;
    do
        w = write(e->tun_fd, plain, n);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        tun_error(e, "write", errno);
done:
    Py_XDECREF(rx);
    Py_XDECREF(pk);
    Py_DECREF(peer);
    return taken;
}

/* Engine.udp_readable(sock): a node UDP socket's reader (drasyl.net.udp.UdpSocket.set_intercept;
 * the event loop calls it, it never raises). One recvmmsg of up to BATCH datagrams; C writes
 * those it takes to the TUN and then reads the TUN at once (a ping's reply is there: the kernel
 * made it inside the write); from the first datagram it does not take on, every one goes to
 * sock.deliver([(bytes, address)]), in order, the address from the socket's address cache. */
static PyObject *Engine_udp_readable(Engine *e, PyObject *sock) {
    PyObject *fdo = PyObject_GetAttr(sock, s_fd);
    int fd = fdo != NULL ? (int)PyLong_AsLong(fdo) : -1;
    Py_XDECREF(fdo);
    if (PyErr_Occurred() || fd < 0) {
        hook_failed(e);
        Py_RETURN_NONE;
    }
    for (int i = 0; i < BATCH; i++) {
        e->rxmsgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        e->rxmsgs[i].msg_hdr.msg_flags = 0;
    }
    int got = recvmmsg(fd, e->rxmsgs, BATCH, 0, NULL);
    if (got <= 0) /* an ICMP error reported once, or nothing: mmsg.Batcher.receive */
        Py_RETURN_NONE;
    PyObject *short_ids = e->peers != NULL ? PyObject_GetAttr(e->core, s_short_ids) : NULL;
    if (short_ids != NULL && !PyDict_Check(short_ids))
        Py_CLEAR(short_ids);
    if (PyErr_Occurred())
        fault(e);
    long long now = monotonic_us();
    int taken = 0, truncated = 0;
    PyObject *rest = NULL, *tuple_of = NULL;
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &e->rxmsgs[i].msg_hdr;
        size_t len = e->rxmsgs[i].msg_len;
        const uint8_t *data = e->rxbuf + (size_t)i * SLOT;
        if (len == SLOT && (h->msg_flags & MSG_TRUNC)) {
            truncated++;
            continue;
        }
        if (rest == NULL && short_ids != NULL && take_rx(e, data, len, short_ids, now)) {
            taken++;
            continue;
        }
        if (rest == NULL) {
            rest = PyList_New(0);
            tuple_of = PyObject_GetAttrString(sock, "batcher");
            Py_XSETREF(tuple_of, tuple_of != NULL ? PyObject_GetAttrString(tuple_of, "addresses") : NULL);
            Py_XSETREF(tuple_of, tuple_of != NULL ? PyObject_GetAttrString(tuple_of, "tuple_of") : NULL);
            if (rest == NULL || tuple_of == NULL) {
                hook_failed(e);
                break;
            }
        }
        PyObject *raw = PyBytes_FromStringAndSize((const char *)h->msg_name, h->msg_namelen);
        PyObject *addr = raw != NULL ? PyObject_CallOneArg(tuple_of, raw) : NULL;
        PyObject *bytes = addr != NULL ? PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len) : NULL;
        PyObject *item = bytes != NULL ? PyTuple_Pack(2, bytes, addr) : NULL;
        if (item == NULL || PyList_Append(rest, item) < 0)
            hook_failed(e);
        Py_XDECREF(raw);
        Py_XDECREF(addr);
        Py_XDECREF(bytes);
        Py_XDECREF(item);
    }
    Py_XDECREF(short_ids);
    Py_XDECREF(tuple_of);
    if (truncated && add_attr(sock, s_recv_truncated, truncated) < 0)
        fault(e);
    if (taken)
        tun_burst(e);
    if (rest != NULL && PyList_GET_SIZE(rest)) {
        PyObject *r = PyObject_CallMethodOneArg(sock, s_deliver, rest);
        if (r == NULL)
            hook_failed(e);
        Py_XDECREF(r);
    }
    Py_XDECREF(rest);
    Py_RETURN_NONE;
}

/* --- configuration from Python ----------------------------------------------------------------- */

static void peers_clear(Engine *e) {
    for (Py_ssize_t i = 0; i < e->npeers; i++) {
        peer_forget(&e->peers[i]);
        Py_CLEAR(e->peers[i].handle);
    }
    PyMem_Free(e->peers);
    e->peers = NULL;
    e->npeers = 0;
    PyMem_Free(e->rx_keys);
    e->rx_keys = NULL;
    table_free(&e->tx);
    table_free(&e->rx);
}

static int pk32(PyObject *o, uint8_t *out) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != 32) {
        PyErr_SetString(PyExc_ValueError, "a public key or session key is 32 bytes");
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(o), 32);
    return 0;
}

/* Engine.set_tables(handles, tx, rx): the policy snapshot. handles: [NodePeer]; tx: [(dst, src,
 * index into handles)], rx: [(src, dst, sender public key)], all /32 host entries, ints as in
 * the packet. Replaces the previous snapshot; an empty handles list turns the fast path off. */
static PyObject *Engine_set_tables(Engine *e, PyObject *args) {
    PyObject *handles, *tx, *rx;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyList_Type, &handles, &PyList_Type, &tx, &PyList_Type, &rx))
        return NULL;
    if (e->queued) {
        PyErr_SetString(PyExc_RuntimeError, "set_tables during a burst");
        return NULL;
    }
    peers_clear(e);
    Py_ssize_t np = PyList_GET_SIZE(handles), ntx = PyList_GET_SIZE(tx), nrx = PyList_GET_SIZE(rx);
    if (np == 0)
        Py_RETURN_NONE;
    e->peers = PyMem_Calloc((size_t)np, sizeof(Peer));
    e->rx_keys = PyMem_Calloc((size_t)(nrx ? nrx : 1), 32);
    if (e->peers == NULL || e->rx_keys == NULL || table_init(&e->tx, (size_t)ntx) < 0
        || table_init(&e->rx, (size_t)nrx) < 0) {
        peers_clear(e);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < np; i++) {
        Peer *p = &e->peers[i];
        p->handle = Py_NewRef(PyList_GET_ITEM(handles, i));
        e->npeers = i + 1;
        PyObject *key = PyObject_GetAttr(p->handle, s_tx);
        if (key == NULL)
            goto fail;
        p->has_key = key != Py_None; /* unarmed: Python sends */
        int bad = p->has_key && pk32(key, p->txkey) < 0;
        Py_DECREF(key);
        if (bad)
            goto fail;
    }
    for (Py_ssize_t i = 0; i < ntx; i++) {
        unsigned long dst, src;
        Py_ssize_t index;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(tx, i), "kkn", &dst, &src, &index))
            goto fail;
        if (index < 0 || index >= np) {
            PyErr_SetString(PyExc_IndexError, "tx entry names no handle");
            goto fail;
        }
        table_put(&e->tx, (uint64_t)(uint32_t)dst << 32 | (uint32_t)src, (int32_t)index);
    }
    for (Py_ssize_t i = 0; i < nrx; i++) {
        unsigned long src, dst;
        PyObject *pk;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(rx, i), "kkO", &src, &dst, &pk) || pk32(pk, e->rx_keys[i]) < 0)
            goto fail;
        table_put(&e->rx, (uint64_t)(uint32_t)src << 32 | (uint32_t)dst, (int32_t)i);
    }
    Py_RETURN_NONE;
fail:
    peers_clear(e);
    return NULL;
}

static void tun_forget(Engine *e) {
    if (e->arena.obj != NULL)
        PyBuffer_Release(&e->arena);
    e->arena.obj = NULL;
    Py_CLEAR(e->lengths);
    e->tun_fd = -1;
}

/* Engine.set_tun(fd, mtu, arena, slot_size, lengths): the TUN queue C reads and writes, with the
 * slots Python reads (drasyl.tun.device.TunQueue); set_tun(-1, 1, None, 0, None): none (every
 * packet is Python's, which counts rx_no_tun). */
static PyObject *Engine_set_tun(Engine *e, PyObject *args) {
    int fd, mtu;
    PyObject *arena, *lengths;
    Py_ssize_t slot_size;
    if (!PyArg_ParseTuple(args, "iiOnO", &fd, &mtu, &arena, &slot_size, &lengths))
        return NULL;
    tun_forget(e);
    if (fd < 0)
        Py_RETURN_NONE;
    if (mtu <= 0 || mtu >= SLOT - SHORT_HEADER || slot_size <= mtu || !PyList_Check(lengths)) {
        PyErr_SetString(PyExc_ValueError, "MTU out of range, slots smaller than the MTU, or no lengths list");
        return NULL;
    }
    if (PyObject_GetBuffer(arena, &e->arena, PyBUF_WRITABLE) < 0) {
        e->arena.obj = NULL;
        return NULL;
    }
    Py_ssize_t slots = PyList_GET_SIZE(lengths) < BATCH ? PyList_GET_SIZE(lengths) : BATCH;
    if (e->arena.len < slot_size * slots) {
        tun_forget(e);
        PyErr_SetString(PyExc_ValueError, "the arena is smaller than its slots");
        return NULL;
    }
    e->lengths = Py_NewRef(lengths);
    e->slot_size = slot_size;
    e->tun_fd = fd;
    e->mtu = mtu;
    Py_RETURN_NONE;
}

/* Engine.seal(short_id, tx_key, payload) and open(datagram, rx_key): the data path's arming
 * and disarming on their own, for the tests that compare them with drasyl.messages. */
static PyObject *Engine_seal(Engine *e, PyObject *args) {
    Py_buffer sid, key, payload;
    if (!PyArg_ParseTuple(args, "y*y*y*", &sid, &key, &payload))
        return NULL;
    PyObject *result = NULL;
    if (sid.len != SID_LEN || key.len != 32 || payload.len > SLOT - SHORT_HEADER) {
        PyErr_SetString(PyExc_ValueError, "short id 4 bytes, key 32, payload at most 2000");
        goto out;
    }
    result = PyBytes_FromStringAndSize(NULL, payload.len + SHORT_HEADER);
    if (result == NULL)
        goto out;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(result);
    memcpy(o, sid.buf, SID_LEN);
    if (native_random(o + SID_LEN) < 0) {
        Py_CLEAR(result);
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    e->enc(o + SHORT_HEADER, o + SID_LEN + R_LEN, TAG_LEN, payload.buf, (size_t)payload.len, o, SID_LEN, key.buf,
           o + SID_LEN);
out:
    PyBuffer_Release(&sid);
    PyBuffer_Release(&key);
    PyBuffer_Release(&payload);
    return result;
}

static PyObject *Engine_open(Engine *e, PyObject *args) {
    Py_buffer data, key;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &key))
        return NULL;
    PyObject *result = NULL;
    if (key.len != 32 || data.len < SHORT_HEADER) {
        PyErr_SetString(PyExc_ValueError, "key 32 bytes, datagram at least 52");
        goto out;
    }
    const uint8_t *d = data.buf;
    size_t n = (size_t)data.len - SHORT_HEADER;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (result != NULL && e->dec((uint8_t *)PyBytes_AS_STRING(result), d + SHORT_HEADER, n, d + SID_LEN + R_LEN,
                                 TAG_LEN, d, SID_LEN, key.buf, d + SID_LEN) != 0)
        Py_SETREF(result, Py_NewRef(Py_None));
out:
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    return result;
}

static PyObject *Engine_stats(Engine *e, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsK}", "tx_packets", e->tx_packets, "rx_packets", e->rx_packets, "faults", e->faults);
}

/* --- the type ---------------------------------------------------------------------------------- */

/* Engine(encrypt, decrypt, node, core, on_tun_error, on_tun_rest, on_fault, max_payload, ping_ident,
 * ping_token): the hooks as described at the Engine struct. */
static int Engine_init(Engine *e, PyObject *args, PyObject *kwds) {
    unsigned long long enc, dec;
    PyObject *node, *core, *on_error, *on_rest, *on_fault;
    int max_payload, ident;
    Py_buffer token;
    static char *names[] = {"encrypt", "decrypt", "node", "core", "on_tun_error", "on_tun_rest", "on_fault",
                            "max_payload", "ping_ident", "ping_token", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKOOOOOiiy*", names, &enc, &dec, &node, &core, &on_error,
                                     &on_rest, &on_fault, &max_payload, &ident, &token))
        return -1;
    int bad = token.len != PING_TOKEN || enc == 0 || dec == 0 || max_payload <= 0
        || max_payload > SLOT - SHORT_HEADER || ident < 0 || ident > 0xFFFF;
    if (!bad)
        memcpy(e->ping_token, token.buf, PING_TOKEN);
    PyBuffer_Release(&token);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "bad AEGIS addresses, payload limit or ping identity");
        return -1;
    }
    e->enc = (aegis_encrypt_fn)(uintptr_t)enc;
    e->dec = (aegis_decrypt_fn)(uintptr_t)dec;
    Py_XSETREF(e->node, Py_NewRef(node));
    Py_XSETREF(e->core, Py_NewRef(core));
    Py_XSETREF(e->on_tun_error, Py_NewRef(on_error));
    Py_XSETREF(e->on_tun_rest, Py_NewRef(on_rest));
    Py_XSETREF(e->on_fault, Py_NewRef(on_fault));
    tun_forget(e);
    e->max_payload = max_payload;
    e->ping_ident = (uint16_t)ident;
    e->ping_set = 1;
    e->mtu = 1;
    if (e->out == NULL)
        e->out = PyMem_Malloc((size_t)BATCH * SLOT);
    if (e->rxbuf == NULL)
        e->rxbuf = PyMem_Malloc((size_t)BATCH * SLOT);
    if (e->out == NULL || e->rxbuf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < BATCH; i++) {
        e->rxiov[i].iov_base = e->rxbuf + (size_t)i * SLOT;
        e->rxiov[i].iov_len = SLOT;
        memset(&e->rxmsgs[i], 0, sizeof(e->rxmsgs[i]));
        e->rxmsgs[i].msg_hdr.msg_name = &e->rxnames[i];
        e->rxmsgs[i].msg_hdr.msg_iov = &e->rxiov[i];
        e->rxmsgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

static int Engine_traverse(Engine *e, visitproc visit, void *arg) {
    Py_VISIT(e->node);
    Py_VISIT(e->core);
    Py_VISIT(e->on_tun_error);
    Py_VISIT(e->on_tun_rest);
    Py_VISIT(e->on_fault);
    Py_VISIT(e->lengths);
    for (Py_ssize_t i = 0; i < e->npeers; i++) {
        Peer *p = &e->peers[i];
        Py_VISIT(p->handle);
        Py_VISIT(p->best);
        Py_VISIT(p->sid);
        Py_VISIT(p->sockets);
        Py_VISIT(p->udp);
    }
    return 0;
}

static int Engine_clear(Engine *e) {
    peers_clear(e);
    tun_forget(e);
    Py_CLEAR(e->node);
    Py_CLEAR(e->core);
    Py_CLEAR(e->on_tun_error);
    Py_CLEAR(e->on_tun_rest);
    Py_CLEAR(e->on_fault);
    return 0;
}

static void Engine_dealloc(Engine *e) {
    PyObject_GC_UnTrack(e);
    Engine_clear(e);
    PyMem_Free(e->out);
    PyMem_Free(e->rxbuf);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef Engine_methods[] = {
    {"tun_readable", (PyCFunction)Engine_tun_readable, METH_NOARGS, "The TUN's reader: send what C takes."},
    {"udp_readable", (PyCFunction)Engine_udp_readable, METH_O, "A UDP socket's reader: write what C takes."},
    {"set_tables", (PyCFunction)Engine_set_tables, METH_VARARGS, "The policy snapshot and the send handles."},
    {"set_tun", (PyCFunction)Engine_set_tun, METH_VARARGS, "The TUN fd (-1: none) and its MTU."},
    {"seal", (PyCFunction)Engine_seal, METH_VARARGS, "A short-header APP armed by C (tests)."},
    {"open", (PyCFunction)Engine_open, METH_VARARGS, "A short-header APP disarmed by C, or None (tests)."},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "Packets C sent and received, and faults."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "drasyl.agent._fast.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The agent's per-packet path for established peers (drasyl/agent/fast.py drives it).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_traverse = (traverseproc)Engine_traverse,
    .tp_clear = (inquiry)Engine_clear,
    .tp_methods = Engine_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "drasyl.agent._fast", "The agent's C data path (see drasyl/agent/fast.py).", -1, NULL,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__fast(void) {
    INTERN(s_best, "best");
    INTERN(s_tx_short_id, "tx_short_id");
    INTERN(s_rx, "rx");
    INTERN(s_tx, "tx");
    INTERN(s_public_key, "public_key");
    INTERN(s_local, "local");
    INTERN(s_remote, "remote");
    INTERN(s_send_sockets, "_send_sockets");
    INTERN(s_closed, "_closed");
    INTERN(s_short_ids, "short_ids");
    INTERN(s_app_tx, "app_tx");
    INTERN(s_app_rx, "app_rx");
    INTERN(s_bytes_in, "bytes_in");
    INTERN(s_bytes_out, "bytes_out");
    INTERN(s_send_drops, "send_drops");
    INTERN(s_gso, "gso");
    INTERN(s_gso_strikes, "_gso_strikes");
    INTERN(s_sock, "sock");
    INTERN(s_fileno, "fileno");
    INTERN(s_family, "family");
    INTERN(s_fd, "fd");
    INTERN(s_deliver, "deliver");
    INTERN(s_recv_truncated, "recv_truncated");
    if (native_random_init() != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
