/* The CPU thread pool. One owner thread calls moe_pool_run() (one run at a
 * time, never from inside a task); it is thread 0 of every run and workers
 * 1..n-1 join it.
 *
 * A run costs a few microseconds: the owner publishes (fn, arg), bumps a
 * generation counter and runs its own share; workers that are spinning see
 * the new generation within a cache-line transfer. A worker that has seen no
 * new generation for SPIN_NS sleeps on a futex on the counter, and the owner
 * pays a futex wake only when some worker is asleep, so a burst of runs (one
 * token's matmuls) never touches the kernel while an idle daemon burns no CPU.
 * The owner waits for the workers the same way: spin, then futex on the
 * count of workers still busy.
 *
 * Both sleeps are the Dekker pattern: the sleeper announces itself (seq_cst)
 * and then futex_wait() re-checks the word in the kernel; the waker changes
 * the word (seq_cst) and then looks for sleepers. One of them always sees
 * the other, so no wake-up is lost. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "common/common.h"

#define SPIN_NS 200000 /* 0.2 ms: longer than the gaps between one token's runs */
#define YIELD_NS 20000 /* then spin politely */

struct pool_worker {
    struct moe_pool *pool;
    int ith;
    pthread_t thread;
};

struct moe_pool {
    int n; /* threads including the owner */
    int n_started; /* workers actually created */
    struct pool_worker *workers; /* [n], entry 0 unused (the owner) */

    /* written by the owner before each generation bump */
    _Alignas(64) moe_task_fn fn;
    void *arg;
    int stop;

    _Alignas(64) uint32_t gen; /* futex word the workers sleep on */
    uint32_t sleepers;         /* workers in or entering futex_wait(gen) */

    _Alignas(64) uint32_t pending; /* workers still running this generation */
    uint32_t owner_sleeping;
};

static void futex_wait(uint32_t *addr, uint32_t val)
{
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(uint32_t *addr, int n)
{
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until *word != val or SPIN_NS pass; true if it changed. The clock is
 * read once per 64 pauses so the spin itself stays cheap. After YIELD_NS the
 * spinner also yields between checks: on a machine with more runnable
 * threads than cores (other work, or a pool larger than the machine) the
 * thread it is waiting for may be queued behind it on this very core. */
static bool spin_until_changed(const uint32_t *word, uint32_t val)
{
    int64_t start = 0;
    for (unsigned i = 1;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != val)
            return true;
        cpu_relax();
        if ((i & 63) == 0) {
            int64_t t = now_ns();
            if (!start)
                start = t;
            else if (t - start > SPIN_NS)
                return false;
            else if (t - start > YIELD_NS)
                sched_yield();
        }
    }
}

static uint32_t wait_new_gen(struct moe_pool *p, uint32_t seen)
{
    if (!spin_until_changed(&p->gen, seen)) {
        __atomic_add_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&p->gen, __ATOMIC_SEQ_CST) == seen)
            futex_wait(&p->gen, seen);
        __atomic_sub_fetch(&p->sleepers, 1, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
}

static void *worker_main(void *argp)
{
    struct pool_worker *wk = argp;
    struct moe_pool *p = wk->pool;
    uint32_t seen = 0;
    for (;;) {
        seen = wait_new_gen(p, seen);
        if (__atomic_load_n(&p->stop, __ATOMIC_RELAXED))
            break;
        p->fn(p->arg, wk->ith, p->n);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_SEQ_CST) == 0 &&
            __atomic_load_n(&p->owner_sleeping, __ATOMIC_SEQ_CST))
            futex_wake(&p->pending, 1);
    }
    return NULL;
}

static void wait_workers(struct moe_pool *p)
{
    for (;;) {
        uint32_t left = __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE);
        if (!left)
            return;
        if (spin_until_changed(&p->pending, left))
            continue;
        /* a worker is slow (preempted, or the machine is shared): sleep */
        __atomic_store_n(&p->owner_sleeping, 1, __ATOMIC_SEQ_CST);
        while ((left = __atomic_load_n(&p->pending, __ATOMIC_SEQ_CST)) != 0)
            futex_wait(&p->pending, left);
        __atomic_store_n(&p->owner_sleeping, 0, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        return;
    }
}

/* Wakes every worker for a new generation (fn, arg and pending already set). */
static void start_generation(struct moe_pool *p)
{
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST))
        futex_wake(&p->gen, INT_MAX);
}

static void stop_workers(struct moe_pool *p)
{
    if (p->n_started == 0)
        return;
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELAXED);
    start_generation(p);
    for (int i = 1; i <= p->n_started; i++)
        pthread_join(p->workers[i].thread, NULL);
    p->n_started = 0;
}

int moe_pool_create(int n_threads, struct moe_pool **out)
{
    *out = NULL;
    if (n_threads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cpus > 0 ? (int)MOE_MIN(cpus, 1024L) : 1;
    }
    struct moe_pool *p = aligned_alloc(64, MOE_ALIGN_UP(sizeof(*p), 64));
    if (!p)
        return moe_err(-ENOMEM, "thread pool: out of memory");
    memset(p, 0, sizeof(*p));
    p->n = n_threads;
    p->workers = calloc((size_t)n_threads, sizeof(*p->workers));
    if (!p->workers) {
        free(p);
        return moe_err(-ENOMEM, "thread pool: out of memory");
    }

    /* Workers never take signals: the daemon handles them through signalfd
     * on its main thread, which needs them blocked everywhere else. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = 0;
    for (int i = 1; i < n_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].ith = i;
        rc = pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]);
        if (rc)
            break;
        p->n_started = i;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc)
        goto fail;
    *out = p;
    return 0;

fail:
    stop_workers(p);
    free(p->workers);
    free(p);
    return moe_err(-rc, "thread pool: cannot start %d threads", n_threads);
}

void moe_pool_free(struct moe_pool *pool)
{
    if (!pool)
        return;
    stop_workers(pool);
    free(pool->workers);
    free(pool);
}

int moe_pool_threads(const struct moe_pool *pool)
{
    return pool ? pool->n : 1;
}

void moe_pool_run(struct moe_pool *pool, moe_task_fn fn, void *arg)
{
    if (!pool || pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    __atomic_store_n(&pool->pending, (uint32_t)(pool->n - 1), __ATOMIC_RELAXED);
    start_generation(pool); /* its seq_cst bump publishes fn, arg and pending */
    fn(arg, 0, pool->n);
    wait_workers(pool);
}
