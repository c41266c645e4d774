/* The super peer's UDP hot path in C: recvmmsg, HELLO -> ACK and relay of APPs, sendmmsg.
 *
 * An optional accelerator of drasyl.superpeer.core (see drasyl/native.py): the Python core
 * stays the reference and keeps all state. Per datagram this code decides, *before changing
 * anything*, whether the datagram is one of the two common cases it knows to handle exactly as
 * SuperPeerCore.receive would:
 *
 *   - an armed HELLO from a current registration, from the same UDP source and socket as its
 *     last one, with the same endpoints, no APPs held for it (and, in a worker, owned by this
 *     worker): only hello_time, hello_stamp and two counters change, and an ACK goes back;
 *   - an APP between two current registrations whose recipient is reachable over UDP from
 *     this socket, and whose pair needs no UNITE now: the APP goes on with hop count + 1 and
 *     three counters change.
 *
 * Everything else (STUN, malformed or failing packets, new registrations, UNITEs, held APPs,
 * TCP recipients, ...) is returned to Python, which runs the core on it. Order is kept: the
 * datagrams this code prepared are sent before a datagram is handed to Python, and the rest of
 * the batch waits in the receive ring until Python asks for the next one.
 *
 * The peer state is read and written through the Python objects (Peer's slots, the core's
 * dicts), so status, metrics, housekeeping and the workers' sharing see exactly what the Python
 * path would have left. AEGIS is libaegis, called through the addresses drasyl.native passes
 * in (the same code drasyl.crypto calls), with the key/nonce swap of drasyl-rs (crypto.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../native.h"
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOT 2048            /* as drasyl.net.mmsg.SLOT: > the 1472-byte MTU */
#define SEND_BATCH 64        /* datagrams per sendmmsg, as drasyl.net.mmsg */
#define LONG_HEADER_LEN 79
#define AD_START 5
#define RANDOM_LEN 32
#define TAG_LEN 16
#define ARM_OVERHEAD 48
#define MAGIC 0x1E3F5001u
#define FLAG_ARMED 0x10
#define HOP_OFFSET 4
#define MAX_HOP_COUNT 7
#define MSG_APP 1
#define MSG_HELLO 2
#define HELLO_MIN 16
#define HELLO_MAX (16 + 18 * 15)
#define ENDPOINT_LEN 18
#define ACK_LEN (LONG_HEADER_LEN + ARM_OVERHEAD + 8)

/* µs and counters are C longs: 64 bits on the LP64 platforms this builds for (Linux), and
 * PyLong_AsLong is the quick conversion of multi-digit ints (PyLong_AsLongLong is not in 3.11). */
#if LONG_MAX < INT64_MAX
#error "a 64-bit long is needed (LP64)"
#endif

/* The core's attributes, interned once. */
static PyObject *s_peers, *s_held, *s_unites, *s_owned, *s_monotonic_ns, *s_time_ns;

/* Peer's slots, read and written at their offsets in the object (as their member descriptors
 * do, without the attribute lookup): only for objects whose type is exactly Peer. */
enum { RX, TX, HELLO_TIME, HELLO_STAMP, PROTO, LOCAL, SRC, HELLO_ENDPOINTS, HELLO_RX, ACK_TX, APP_RX, APP_TX,
       RELAYED_BYTES, N_SLOTS };
static const char *slot_names[N_SLOTS] = {
    "rx", "tx", "hello_time", "hello_stamp", "proto", "local", "src", "hello_endpoints", "hello_rx", "ack_tx",
    "app_rx", "app_tx", "relayed_bytes",
};

typedef struct {
    PyObject_HEAD
    int fd;
    socklen_t namesize;
    PyObject *core;
    PyObject *local;       /* this socket's address tuple, as the core stores it in Peer.local */
    PyObject *tuples;      /* AddressCache: raw sockaddr -> tuple */
    PyObject *raws;        /* AddressCache: tuple -> raw sockaddr */
    PyObject *tuple_of;    /* AddressCache.tuple_of, for addresses not cached yet */
    PyObject *handoff;     /* handoff(data, address, now, wall_offset): the core takes a datagram */
    PyObject *fault;       /* fault(exception): an unexpected error here, for the log */
    PyObject *time;        /* the time module: its clocks are read as the Python adapter reads them */
    PyTypeObject *peer_type;
    Py_ssize_t off[N_SLOTS];
    uint8_t public_key[32];
    int32_t network_id;
    long timeout_us, max_age_us, unite_us;
    uint8_t ack_header[LONG_HEADER_LEN];
    aegis_encrypt_fn encrypt;
    aegis_decrypt_fn decrypt;
    /* receive ring */
    struct mmsghdr *rx_msgs;
    struct iovec *rx_iov;
    uint8_t *rx_buf, *rx_names;
    unsigned capacity, count, cursor;
    int received;          /* recvmmsg ran in this wake-up */
    /* send ring: an iovec points at an rx slot (relay, in place) or a tx slot (an ACK) */
    struct mmsghdr tx_msgs[SEND_BATCH];
    struct iovec tx_iov[SEND_BATCH];
    uint8_t tx_buf[SEND_BATCH][ACK_LEN];
    uint8_t *tx_names;
    unsigned pending;
    uint8_t plain[SLOT];
    /* counters, read by Python */
    unsigned long long hellos, relays, handed, truncated, send_drops;
} Fast;

/* --- small helpers over Python objects --------------------------------------------------- */

/* obj's slot at off (borrowed); NULL with AttributeError when it is unset. */
static PyObject *slot(PyObject *obj, Py_ssize_t off) {
    PyObject *v = *(PyObject **)((char *)obj + off);
    if (v == NULL)
        PyErr_SetString(PyExc_AttributeError, "a Peer slot is unset");
    return v;
}

/* Set obj's slot at off to v, a new reference that this takes over. */
static int slot_set(PyObject *obj, Py_ssize_t off, PyObject *v) {
    if (v == NULL)
        return -1;
    PyObject **at = (PyObject **)((char *)obj + off);
    PyObject *old = *at;
    *at = v;
    Py_XDECREF(old);
    return 0;
}

static int get_ll(PyObject *obj, Py_ssize_t off, long *out) {
    PyObject *v = slot(obj, off);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLong(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int get_ull(PyObject *obj, Py_ssize_t off, unsigned long *out) {
    PyObject *v = slot(obj, off);
    if (v == NULL)
        return -1;
    *out = PyLong_AsUnsignedLong(v);
    return (*out == (unsigned long)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int add_one(PyObject *obj, Py_ssize_t off) {
    long v;
    if (get_ll(obj, off, &v) < 0)
        return -1;
    return slot_set(obj, off, PyLong_FromLong(v + 1));
}

/* 1 if obj's slot equals expected, 0 if not, -1 on error. */
static int slot_is(PyObject *obj, Py_ssize_t off, PyObject *expected) {
    PyObject *v = slot(obj, off);
    if (v == NULL)
        return -1;
    if (v == expected)
        return 1;
    Py_INCREF(v);
    int rc = PyObject_RichCompareBool(v, expected, Py_EQ);
    Py_DECREF(v);
    return rc;
}

/* The 32-byte key in obj's slot, or 0 when it is None or not 32 bytes; -1 on error. */
static int get_key(PyObject *obj, Py_ssize_t off, uint8_t *out) {
    PyObject *v = slot(obj, off);
    if (v == NULL)
        return -1;
    int ok = PyBytes_Check(v) && PyBytes_GET_SIZE(v) == 32;
    if (ok)
        memcpy(out, PyBytes_AS_STRING(v), 32);
    return ok;
}

static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* The peer in peers for key, when its registration is current (borrowed), NULL if not. */
static PyObject *current_peer(Fast *self, PyObject *peers, PyObject *key, long now, int *err) {
    PyObject *peer = PyDict_GetItemWithError(peers, key);
    if (peer == NULL || Py_TYPE(peer) != self->peer_type) {  /* another type: the core's business */
        *err = PyErr_Occurred() != NULL;
        return NULL;
    }
    long hello_time;
    if (get_ll(peer, self->off[HELLO_TIME], &hello_time) < 0) {
        *err = 1;
        return NULL;
    }
    return now - hello_time > self->timeout_us ? NULL : peer;
}

/* --- sending --------------------------------------------------------------------------- */

static void queue(Fast *self, void *data, size_t len, const uint8_t *name) {
    unsigned i = self->pending++;
    self->tx_iov[i].iov_base = data;
    self->tx_iov[i].iov_len = len;
    memcpy(self->tx_names + (size_t)i * self->namesize, name, self->namesize);
}

/* sendmmsg what is queued: a partial send goes on, a refused datagram is skipped and counted,
 * a full buffer drops the rest (UDP), as drasyl.net.mmsg.Batcher._flush. */
static void flush(Fast *self) {
    unsigned count = self->pending, sent = 0;
    self->pending = 0;
    while (sent < count) {
        int n = sendmmsg(self->fd, self->tx_msgs + sent, count - sent, 0);
        if (n > 0) {
            sent += (unsigned)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            self->send_drops += count - sent;
            return;
        }
        self->send_drops += 1;
        sent += 1;
    }
}

/* --- the two fast cases ----------------------------------------------------------------- */

/* The core's maps, looked up once per drain (borrowed from its __dict__, which drain holds). */
typedef struct {
    PyObject *peers, *held, *unites, *owned;  /* owned: only a worker's core has it, else NULL */
} Maps;

/* The sender's address tuple, made when first needed (a relay needs the recipient's only). */
static PyObject *address(Fast *self, const uint8_t *name);

static int hello_of(Fast *self, const Maps *maps, PyObject *peer, uint8_t *data, size_t len, PyObject *sender,
                    PyObject **remote, const uint8_t *name, long now, long wall);

/* 1: answered here; 0: not one of ours, for Python; -1: error (Python exception set). */
static int on_hello(Fast *self, const Maps *maps, uint8_t *data, size_t len, PyObject *sender,
                    PyObject **remote, const uint8_t *name, long now, long wall) {
    int err = 0;
    PyObject *peer = current_peer(self, maps->peers, sender, now, &err);
    if (peer == NULL)
        return err ? -1 : 0;
    Py_INCREF(peer);  /* address() below may run Python code */
    int rc = hello_of(self, maps, peer, data, len, sender, remote, name, now, wall);
    Py_DECREF(peer);
    return rc;
}

static int hello_of(Fast *self, const Maps *maps, PyObject *peer, uint8_t *data, size_t len, PyObject *sender,
                    PyObject **remote, const uint8_t *name, long now, long wall) {
    if (PyDict_GET_SIZE(maps->held)) {
        int rc = PyDict_Contains(maps->held, sender);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
    if (maps->owned != NULL) {  /* a worker: a registration it does not own yet must be announced */
        int rc = PyDict_Contains(maps->owned, sender);
        if (rc <= 0)
            return rc;
    }
    if (*remote == NULL && (*remote = address(self, name)) == NULL)
        return -1;
    int same;
    if ((same = slot_is(peer, self->off[SRC], *remote)) <= 0
        || (same = slot_is(peer, self->off[LOCAL], self->local)) <= 0)
        return same;
    long proto;
    if (get_ll(peer, self->off[PROTO], &proto) < 0)
        return -1;
    if (proto != 0)  /* registered over TCP: moving it to UDP is Python's */
        return 0;
    uint8_t rx[32], tx[32];
    int have;
    if ((have = get_key(peer, self->off[RX], rx)) <= 0 || (have = get_key(peer, self->off[TX], tx)) <= 0)
        return have;
    if (len < LONG_HEADER_LEN + ARM_OVERHEAD + HELLO_MIN)
        return 0;
    size_t n = len - LONG_HEADER_LEN - ARM_OVERHEAD;
    uint8_t *r = data + LONG_HEADER_LEN;
    if (self->decrypt(self->plain, r + ARM_OVERHEAD, n, r + RANDOM_LEN, TAG_LEN, data + AD_START,
                      LONG_HEADER_LEN - AD_START, rx, r) != 0)
        return 0;  /* Python disarms it again and counts it */
    if (n > HELLO_MAX)
        n = HELLO_MAX;
    if ((n - HELLO_MIN) % ENDPOINT_LEN)
        return 0;
    uint64_t time = be64(self->plain), child_time = be64(self->plain + 8);
    if (child_time == 0 || now + wall < 0)
        return 0;
    uint64_t wall_now = (uint64_t)(now + wall);
    if (time < wall_now && wall_now - time > (uint64_t)self->max_age_us)
        return 0;  /* too old: Python counts it */
    PyObject *sent = slot(peer, self->off[HELLO_ENDPOINTS]);
    if (sent == NULL)
        return -1;
    if (!PyBytes_Check(sent) || (size_t)PyBytes_GET_SIZE(sent) != n - HELLO_MIN
        || memcmp(PyBytes_AS_STRING(sent), self->plain + HELLO_MIN, n - HELLO_MIN) != 0)
        return 0;
    unsigned long stamp;
    if (get_ull(peer, self->off[HELLO_STAMP], &stamp) < 0)
        return -1;
    /* from here on, state changes exactly as in SuperPeerCore._on_hello */
    if (time > stamp && slot_set(peer, self->off[HELLO_STAMP], PyLong_FromUnsignedLong(time)) < 0)
        return -1;
    if (slot_set(peer, self->off[HELLO_TIME], PyLong_FromLong(now)) < 0
        || add_one(peer, self->off[HELLO_RX]) < 0 || add_one(peer, self->off[ACK_TX]) < 0)
        return -1;
    uint8_t *ack = self->tx_buf[self->pending];
    memcpy(ack, self->ack_header, LONG_HEADER_LEN);
    memcpy(ack + 10, PyBytes_AS_STRING(sender), 32);
    uint8_t *out_r = ack + LONG_HEADER_LEN;
    if (native_random(out_r) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->encrypt(out_r + ARM_OVERHEAD, out_r + RANDOM_LEN, TAG_LEN, self->plain, 8, ack + AD_START,
                  LONG_HEADER_LEN - AD_START, tx, out_r);
    queue(self, ack, ACK_LEN, name);
    self->hellos++;
    return 1;
}

static int relay(Fast *self, const Maps *maps, PyObject *src, PyObject *dst, PyObject *raw, uint8_t *data,
                 size_t len, PyObject *sender, PyObject *recipient, long now);

static int on_app(Fast *self, const Maps *maps, uint8_t *data, size_t len, PyObject *sender,
                  PyObject *recipient, long now) {
    if (data[HOP_OFFSET] > MAX_HOP_COUNT || memcmp(data + 10, data + 42, 32) == 0)
        return 0;
    int err = 0;
    PyObject *src = current_peer(self, maps->peers, sender, now, &err);
    if (src == NULL)
        return err ? -1 : 0;
    PyObject *dst = current_peer(self, maps->peers, recipient, now, &err);
    if (dst == NULL)
        return err ? -1 : 0;
    long proto;
    if (get_ll(dst, self->off[PROTO], &proto) < 0)
        return -1;
    if (proto != 0)
        return 0;
    int same = slot_is(dst, self->off[LOCAL], self->local);
    if (same <= 0)
        return same;
    PyObject *dst_src = slot(dst, self->off[SRC]);
    if (dst_src == NULL)
        return -1;
    PyObject *raw = PyDict_GetItemWithError(self->raws, dst_src);
    if (raw == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyBytes_Check(raw) || (size_t)PyBytes_GET_SIZE(raw) != self->namesize)
        return 0;
    Py_INCREF(raw);
    int rc = relay(self, maps, src, dst, raw, data, len, sender, recipient, now);
    Py_DECREF(raw);
    return rc;
}

static int relay(Fast *self, const Maps *maps, PyObject *src, PyObject *dst, PyObject *raw, uint8_t *data,
                 size_t len, PyObject *sender, PyObject *recipient, long now) {
    if (self->unite_us == 0)
        return 0;  /* a UNITE pair after every relayed APP: Python's */
    if (self->unite_us > 0) {  /* at most one UNITE pair per window: if one is due, Python sends it */
        int ordered = memcmp(data + 42, data + 10, 32) < 0;
        PyObject *key = ordered ? PyTuple_Pack(2, sender, recipient) : PyTuple_Pack(2, recipient, sender);
        if (key == NULL)
            return -1;
        PyObject *last = PyDict_GetItemWithError(maps->unites, key);
        Py_DECREF(key);
        if (last == NULL)
            return PyErr_Occurred() ? -1 : 0;
        long at = PyLong_AsLong(last);
        if (at == -1 && PyErr_Occurred())
            return -1;
        if (now - at >= self->unite_us)
            return 0;
    }
    PyObject *relayed = slot(src, self->off[RELAYED_BYTES]);
    if (relayed == NULL)
        return -1;
    if (relayed != Py_None && !PyDict_Check(relayed))
        return 0;
    /* from here on, as SuperPeerCore._relay */
    Py_INCREF(relayed);
    if (add_one(src, self->off[APP_RX]) < 0 || add_one(dst, self->off[APP_TX]) < 0) {
        Py_DECREF(relayed);
        return -1;
    }
    if (relayed == Py_None) {
        Py_DECREF(relayed);
        if ((relayed = PyDict_New()) == NULL)
            return -1;
        Py_INCREF(relayed);
        if (slot_set(src, self->off[RELAYED_BYTES], relayed) < 0) {
            Py_DECREF(relayed);
            return -1;
        }
    }
    PyObject *before = PyDict_GetItemWithError(relayed, recipient);
    long total = (long)len;
    if (before != NULL)
        total += PyLong_AsLong(before);
    PyObject *v = PyErr_Occurred() ? NULL : PyLong_FromLong(total);
    int rc = v == NULL ? -1 : PyDict_SetItem(relayed, recipient, v);
    Py_XDECREF(v);
    Py_DECREF(relayed);
    if (rc < 0)
        return -1;
    data[HOP_OFFSET] += 1;
    queue(self, data, len, (const uint8_t *)PyBytes_AS_STRING(raw));
    self->relays++;
    return 1;
}

/* One datagram of the ring: 1 handled, 0 for Python, -1 error. */
static int handle(Fast *self, const Maps *maps, uint8_t *data, size_t len, PyObject **remote,
                  const uint8_t *name, long now, long wall) {
    if (len < LONG_HEADER_LEN)
        return 0;
    uint32_t magic = (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3];
    int32_t network_id = (int32_t)((uint32_t)data[6] << 24 | (uint32_t)data[7] << 16 | (uint32_t)data[8] << 8
                                   | data[9]);
    uint8_t mtype = data[LONG_HEADER_LEN - 1];
    if (magic != MAGIC || network_id != self->network_id || !(data[5] & FLAG_ARMED))
        return 0;
    int hello = memcmp(data + 10, self->public_key, 32) == 0;
    if (hello ? mtype != MSG_HELLO : mtype != MSG_APP)
        return 0;
    PyObject *sender = PyBytes_FromStringAndSize((const char *)data + 42, 32);
    if (sender == NULL)
        return -1;
    int rc;
    if (hello) {
        rc = on_hello(self, maps, data, len, sender, remote, name, now, wall);
    } else {
        PyObject *recipient = PyBytes_FromStringAndSize((const char *)data + 10, 32);
        rc = recipient == NULL ? -1 : on_app(self, maps, data, len, sender, recipient, now);
        Py_XDECREF(recipient);
    }
    Py_DECREF(sender);
    return rc;
}

/* The address tuple for a raw sockaddr, as drasyl.net.mmsg.AddressCache gives it (new ref). */
static PyObject *address(Fast *self, const uint8_t *name) {
    PyObject *raw = PyBytes_FromStringAndSize((const char *)name, self->namesize);
    if (raw == NULL)
        return NULL;
    PyObject *addr = PyDict_GetItemWithError(self->tuples, raw);
    if (addr != NULL)
        Py_INCREF(addr);
    else if (!PyErr_Occurred())
        addr = PyObject_CallOneArg(self->tuple_of, raw);
    Py_DECREF(raw);
    return addr;
}

/* The clocks as drasyl.clock reads them (through the time module, so a test that shifts
 * time.time_ns shifts this too): now in monotonic µs, wall_offset = wall µs - now. */
static int clocks(Fast *self, long *now, long *wall) {
    PyObject *mono = PyObject_CallMethodNoArgs(self->time, s_monotonic_ns);
    PyObject *real = mono == NULL ? NULL : PyObject_CallMethodNoArgs(self->time, s_time_ns);
    long mono_ns = mono == NULL ? -1 : PyLong_AsLong(mono);
    long real_ns = real == NULL ? -1 : PyLong_AsLong(real);
    Py_XDECREF(mono);
    Py_XDECREF(real);
    if (PyErr_Occurred())
        return -1;
    *now = mono_ns / 1000;
    *wall = real_ns / 1000 - *now;
    return 0;
}

/* The core's maps (borrowed from d, its __dict__, which the caller holds). */
static int maps_of(PyObject *d, Maps *maps) {
    maps->peers = PyDict_GetItemWithError(d, s_peers);
    maps->held = PyDict_GetItemWithError(d, s_held);
    maps->unites = PyDict_GetItemWithError(d, s_unites);
    maps->owned = PyDict_GetItemWithError(d, s_owned);
    if (PyErr_Occurred())
        return -1;
    if (!maps->peers || !PyDict_Check(maps->peers) || !maps->held || !PyDict_Check(maps->held) || !maps->unites
        || !PyDict_Check(maps->unites) || (maps->owned && !PyDict_Check(maps->owned))) {
        PyErr_SetString(PyExc_TypeError, "not a SuperPeerCore: peers, _held and _unites must be dicts");
        return -1;
    }
    return 0;
}

/* Hand the current exception to fault(); -1 only if that fails too. */
static int report(Fast *self) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *rc = PyObject_CallOneArg(self->fault, value != NULL ? value : Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    Py_XDECREF(rc);
    return rc == NULL ? -1 : 0;
}

/* Fast.readable(sock): the event loop's reader (UdpSocket.set_intercept; sock is not used: this
 * object has the socket's descriptor). One recvmmsg; each datagram is answered here or given to
 * handoff(), in order; what was prepared goes out before each handoff and at the end. */
static PyObject *Fast_readable(Fast *self, PyObject *unused) {
    long now, wall;
    if (self->core == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Fast is not initialised, or was cleared");
        return NULL;
    }
    if (clocks(self, &now, &wall) < 0)
        return NULL;
    PyObject *d = PyObject_GenericGetDict(self->core, NULL);
    if (d == NULL)
        return NULL;
    Maps maps;
    if (maps_of(d, &maps) < 0)
        goto error;
    for (;;) {
        if (self->cursor >= self->count) {
            if (self->pending)
                flush(self);  /* the ring is reused: what points into it leaves first */
            if (self->received) {
                self->received = 0;
                Py_DECREF(d);
                Py_RETURN_NONE;
            }
            int n = recvmmsg(self->fd, self->rx_msgs, self->capacity, 0, NULL);
            self->received = 1;
            self->cursor = 0;
            self->count = n > 0 ? (unsigned)n : 0;
            continue;
        }
        unsigned i = self->cursor++;
        struct mmsghdr *m = &self->rx_msgs[i];
        size_t len = m->msg_len;
        if (len == SLOT && (m->msg_hdr.msg_flags & MSG_TRUNC)) {
            self->truncated++;
            continue;
        }
        uint8_t *data = self->rx_buf + (size_t)i * SLOT;
        const uint8_t *name = self->rx_names + (size_t)i * self->namesize;
        PyObject *remote = NULL;
        int rc = handle(self, &maps, data, len, &remote, name, now, wall);
        if (rc == 0 && remote == NULL && (remote = address(self, name)) == NULL)
            rc = -1;
        if (rc == 0) {
            if (self->pending)
                flush(self);  /* order: what came before goes out before the core's answer */
            self->handed++;
            PyObject *args[4] = {PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len), remote,
                                 PyLong_FromLong(now), PyLong_FromLong(wall)};
            PyObject *result = NULL;
            if (args[0] && args[2] && args[3])
                result = PyObject_Vectorcall(self->handoff, args, 4, NULL);
            for (int k = 0; k < 4; k++)
                Py_XDECREF(args[k]);
            if (result == NULL)
                goto error;  /* handoff() reports its own errors: this is one it let through */
            Py_DECREF(result);
            if (maps_of(d, &maps) < 0)  /* the core ran: its maps may be others now */
                goto error;
            continue;
        }
        Py_XDECREF(remote);
        if (rc < 0 && report(self) < 0)
            goto error;
        if (self->pending == SEND_BATCH)
            flush(self);
    }
error:
    if (self->pending)
        flush(self);
    Py_DECREF(d);
    return NULL;
}

/* --- the type ---------------------------------------------------------------------------- */

static int Fast_init(Fast *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"fd", "core", "peer_type", "local", "cache", "public_key", "network_id", "timeout_us",
                             "max_age_us", "unite_us", "ack_header", "encrypt", "decrypt", "capacity", "handoff",
                             "fault", NULL};
    int fd, network_id;
    unsigned capacity;
    PyObject *core, *peer_type, *local, *cache, *handoff, *fault;
    Py_buffer pk, header;
    unsigned long long enc, dec;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOO!OOy*illly*KKIOO", kwlist, &fd, &core, &PyType_Type,
                                     &peer_type, &local, &cache, &pk, &network_id, &self->timeout_us,
                                     &self->max_age_us, &self->unite_us, &header, &enc, &dec, &capacity, &handoff,
                                     &fault))
        return -1;
    if (self->rx_msgs != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Fast is initialised once");
        return -1;
    }
    for (int k = 0; k < N_SLOTS; k++) {  /* where each of Peer's slots lives in its objects */
        PyObject *descr = PyObject_GetAttrString(peer_type, slot_names[k]);
        if (descr == NULL)
            return -1;
        int member = Py_IS_TYPE(descr, &PyMemberDescr_Type)
            && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (member)
            self->off[k] = ((PyMemberDescrObject *)descr)->d_member->offset;
        Py_DECREF(descr);
        if (!member) {
            PyErr_Format(PyExc_TypeError, "peer_type.%s is not a slot", slot_names[k]);
            return -1;
        }
    }
    Py_XSETREF(self->time, PyImport_ImportModule("time"));
    if (self->time == NULL)
        return -1;
    Py_INCREF(peer_type);
    Py_XSETREF(self->peer_type, (PyTypeObject *)peer_type);
    Py_INCREF(handoff);
    Py_XSETREF(self->handoff, handoff);
    Py_INCREF(fault);
    Py_XSETREF(self->fault, fault);
    int ok = pk.len == 32 && header.len == LONG_HEADER_LEN && capacity > 0;
    if (ok) {
        memcpy(self->public_key, pk.buf, 32);
        memcpy(self->ack_header, header.buf, LONG_HEADER_LEN);
    }
    PyBuffer_Release(&pk);
    PyBuffer_Release(&header);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "public_key of 32 bytes, ack_header of 79, capacity > 0");
        return -1;
    }
    PyObject *size = PyObject_GetAttrString(cache, "size");
    if (size == NULL)
        return -1;
    self->namesize = (socklen_t)PyLong_AsLong(size);
    Py_DECREF(size);
    if (PyErr_Occurred())
        return -1;
    Py_XSETREF(self->tuples, PyObject_GetAttrString(cache, "_tuples"));
    Py_XSETREF(self->raws, PyObject_GetAttrString(cache, "raws"));
    Py_XSETREF(self->tuple_of, PyObject_GetAttrString(cache, "tuple_of"));
    if (self->tuples == NULL || self->raws == NULL || self->tuple_of == NULL)
        return -1;
    if (!PyDict_Check(self->tuples) || !PyDict_Check(self->raws)) {
        PyErr_SetString(PyExc_TypeError, "the address cache's maps must be dicts");
        return -1;
    }
    Py_INCREF(core);
    Py_XSETREF(self->core, core);
    Py_INCREF(local);
    Py_XSETREF(self->local, local);
    self->fd = fd;
    self->network_id = network_id;
    self->encrypt = (aegis_encrypt_fn)(uintptr_t)enc;
    self->decrypt = (aegis_decrypt_fn)(uintptr_t)dec;
    self->capacity = capacity;
    self->rx_msgs = PyMem_Calloc(capacity, sizeof(struct mmsghdr));
    self->rx_iov = PyMem_Calloc(capacity, sizeof(struct iovec));
    self->rx_buf = PyMem_Malloc((size_t)capacity * SLOT);
    self->rx_names = PyMem_Calloc(capacity, self->namesize);
    self->tx_names = PyMem_Calloc(SEND_BATCH, self->namesize);
    if (!self->rx_msgs || !self->rx_iov || !self->rx_buf || !self->rx_names || !self->tx_names) {
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned i = 0; i < capacity; i++) {
        self->rx_iov[i].iov_base = self->rx_buf + (size_t)i * SLOT;
        self->rx_iov[i].iov_len = SLOT;
        self->rx_msgs[i].msg_hdr.msg_name = self->rx_names + (size_t)i * self->namesize;
        self->rx_msgs[i].msg_hdr.msg_namelen = self->namesize;
        self->rx_msgs[i].msg_hdr.msg_iov = &self->rx_iov[i];
        self->rx_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    for (unsigned i = 0; i < SEND_BATCH; i++) {
        memset(&self->tx_msgs[i], 0, sizeof(struct mmsghdr));
        self->tx_msgs[i].msg_hdr.msg_name = self->tx_names + (size_t)i * self->namesize;
        self->tx_msgs[i].msg_hdr.msg_namelen = self->namesize;
        self->tx_msgs[i].msg_hdr.msg_iov = &self->tx_iov[i];
        self->tx_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

/* The objects Fast holds (handoff and fault hold the server, which holds this: a cycle). */
static int Fast_traverse(Fast *self, visitproc visit, void *arg) {
    Py_VISIT(self->core);
    Py_VISIT(self->local);
    Py_VISIT(self->tuples);
    Py_VISIT(self->raws);
    Py_VISIT(self->tuple_of);
    Py_VISIT(self->handoff);
    Py_VISIT(self->fault);
    Py_VISIT(self->time);
    Py_VISIT((PyObject *)self->peer_type);
    return 0;
}

static int Fast_clear(Fast *self) {
    Py_CLEAR(self->core);
    Py_CLEAR(self->local);
    Py_CLEAR(self->tuples);
    Py_CLEAR(self->raws);
    Py_CLEAR(self->tuple_of);
    Py_CLEAR(self->handoff);
    Py_CLEAR(self->fault);
    Py_CLEAR(self->time);
    Py_CLEAR(self->peer_type);
    return 0;
}

static void Fast_dealloc(Fast *self) {
    PyObject_GC_UnTrack(self);
    Fast_clear(self);
    PyMem_Free(self->rx_msgs);
    PyMem_Free(self->rx_iov);
    PyMem_Free(self->rx_buf);
    PyMem_Free(self->rx_names);
    PyMem_Free(self->tx_names);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Fast_counters(Fast *self, PyObject *unused) {
    return Py_BuildValue("{sKsKsKsKsK}", "hellos", self->hellos, "relays", self->relays, "handed", self->handed,
                         "truncated", self->truncated, "send_drops", self->send_drops);
}

static PyMethodDef Fast_methods[] = {
    {"readable", (PyCFunction)Fast_readable, METH_O,
     "The event loop's reader: answers what it can, hands the rest to handoff(data, address, now, "
     "wall_offset) in order."},
    {"counters", (PyCFunction)Fast_counters, METH_NOARGS,
     "{'hellos', 'relays', 'handed', 'truncated', 'send_drops'}: datagrams handled here, handed to Python, "
     "dropped as too long, and sends the kernel refused."},
    {NULL},
};

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "drasyl.superpeer._fast.Fast",
    .tp_basicsize = sizeof(Fast),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One UDP socket's HELLO -> ACK and relay loop in C, around a SuperPeerCore.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Fast_init,
    .tp_dealloc = (destructor)Fast_dealloc,
    .tp_traverse = (traverseproc)Fast_traverse,
    .tp_clear = (inquiry)Fast_clear,
    .tp_methods = Fast_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "drasyl.superpeer._fast",
    "The super peer's UDP hot path in C (an optional accelerator, see drasyl/native.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fast(void) {
    struct { PyObject **slot; const char *name; } names[] = {
        {&s_peers, "peers"}, {&s_held, "_held"}, {&s_unites, "_unites"}, {&s_owned, "_owned"},
        {&s_monotonic_ns, "monotonic_ns"}, {&s_time_ns, "time_ns"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    if (native_random_init() != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (PyType_Ready(&FastType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FastType);
    if (PyModule_AddObject(m, "Fast", (PyObject *)&FastType) < 0) {
        Py_DECREF(&FastType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
