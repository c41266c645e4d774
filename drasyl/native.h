/* What the C accelerators (drasyl/native.py) share: libaegis' function types and the random R.
 *
 * AEGIS-256X2 is libaegis inside aeg's cffi module; drasyl.native.aegis_functions() passes the
 * two functions' addresses, so no accelerator links a second copy. drasyl-rs swaps key and
 * nonce (drasyl/crypto.py): key = the 32 random bytes R sent in clear, nonce = the session key.
 *
 * R comes from a pool refilled by getrandom, one per module (each includes this file once);
 * a forked child drops the pool it inherited (pthread_atfork, registered by the module's
 * init through native_random_init), so two processes never send the same R.
 */
#ifndef DRASYL_NATIVE_H
#define DRASYL_NATIVE_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

typedef int (*aegis_encrypt_fn)(uint8_t *c, uint8_t *mac, size_t maclen, const uint8_t *m, size_t mlen,
                                const uint8_t *ad, size_t adlen, const uint8_t *npub, const uint8_t *k);
typedef int (*aegis_decrypt_fn)(uint8_t *m, const uint8_t *c, size_t clen, const uint8_t *mac, size_t maclen,
                                const uint8_t *ad, size_t adlen, const uint8_t *npub, const uint8_t *k);

#define NATIVE_RANDOM_LEN 32
#define NATIVE_POOL_LEN (128 * NATIVE_RANDOM_LEN)

static uint8_t native_pool[NATIVE_POOL_LEN];
static size_t native_pool_at = NATIVE_POOL_LEN;

static void native_forget_random(void) { native_pool_at = NATIVE_POOL_LEN; }

/* 0 after registering the fork handler; -1 (errno set) if that failed. */
static int native_random_init(void) {
    int rc = pthread_atfork(NULL, NULL, native_forget_random);
    if (rc != 0)
        errno = rc;
    return rc == 0 ? 0 : -1;
}

/* 32 fresh random bytes into out; -1 (errno set) if getrandom failed. */
static int native_random(uint8_t *out) {
    if (native_pool_at >= NATIVE_POOL_LEN) {
        size_t got = 0;
        while (got < NATIVE_POOL_LEN) {
            ssize_t n = getrandom(native_pool + got, NATIVE_POOL_LEN - got, 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            got += (size_t)n;
        }
        native_pool_at = 0;
    }
    memcpy(out, native_pool + native_pool_at, NATIVE_RANDOM_LEN);
    native_pool_at += NATIVE_RANDOM_LEN;
    return 0;
}

#endif
