#!/usr/bin/env python3
"""The peers of `stepwise bench`, on the same workload: N workflows of K no-op steps, each
step's result durably committed to PostgreSQL before the next step starts (synchronous_commit
as the server has it, `on` by default), C workflows in flight.

    peers.py dbos   --url URL --sagas N --steps K --concurrency C [--processes P]
    peers.py absurd --url URL --sagas N --steps K --concurrency C [--processes P]

Each peer runs in its own database (stepwise_peer_dbos / stepwise_peer_absurd, dropped and
recreated), and prints one JSON line. Phases, like `stepwise bench`:
  1. idle latency: workflows one at a time; start -> first step, start -> done;
  2. throughput: N workflows, C in flight, spread over P processes (Python has a GIL; one
     process per core is what both projects recommend for CPU-bound Python), steps/s.
Peers use their documented defaults except what is written here:
  - DBOS Transact: the system database pool holds at least C/P + 4 connections, so the
    threads in flight never wait for a connection; workflows are called directly from C/P
    threads per process (no queue, whose polling would add latency).
  - Absurd: one connection per worker thread (the sync client serializes a shared connection),
    claim batch 1, poll interval 10 ms instead of 250 ms when idle (only helps it).
"""

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg


def with_database(url, db):
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    server = rest.split("/", 1)[0]
    return f"{scheme}://{server}/{db}" + (f"?{query}" if query else "")


def recreate(url, db):
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return round(ordered[index] * 1000.0, 3)


def server_facts(url):
    with psycopg.connect(url, autocommit=True) as conn:
        sc = conn.execute("SHOW synchronous_commit").fetchone()[0]
        commits = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()[0]
        wal = conn.execute("SELECT wal_bytes::bigint FROM pg_stat_wal").fetchone()[0]
    return sc, commits, wal


def settle_stats():
    # Backends publish statistics at most once a second.
    time.sleep(1.2)


# ----------------------------------------------------------------------------------- DBOS


def dbos_setup(url, pool):
    from dbos import DBOS

    DBOS(
        config={
            "name": "stepwise-peer-bench",
            "system_database_url": url,
            "sys_db_pool_size": pool,
            "log_level": "WARNING",
            # One executor per process, so no process recovers another's workflows.
            "executor_id": f"bench-{os.getpid()}",
        }
    )

    @DBOS.step()
    def noop(index, t0):
        if index == 0:
            return time.time() - t0
        return {"index": index}

    @DBOS.workflow()
    def chain(steps, t0):
        first = None
        for index in range(steps):
            out = noop(index, t0)
            if index == 0:
                first = out
        return first

    DBOS.launch()
    return DBOS, chain


def dbos_worker(url, steps, count, threads, barrier, out):
    dbos, chain = dbos_setup(url, threads + 4)
    barrier.wait()
    done = []

    def one(_):
        t0 = time.time()
        chain(steps, t0)
        done.append(time.time() - t0)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    out.put(done)
    dbos.destroy()


def run_dbos(args):
    db = "stepwise_peer_dbos"
    recreate(args.url, db)
    url = with_database(args.url, db)
    # Idle latency, one process.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=dbos_idle, args=(url, args.steps, args.idle_samples, q))
    p.start()
    first, done = q.get()
    p.join()
    return throughput("dbos", args, url, dbos_worker, first, done)


def dbos_idle(url, steps, samples, out):
    dbos, chain = dbos_setup(url, 4)
    first, done = [], []
    for _ in range(samples):
        t0 = time.time()
        first.append(chain(steps, t0))
        done.append(time.time() - t0)
        time.sleep(0.005)
    out.put((first, done))
    dbos.destroy()


# --------------------------------------------------------------------------------- Absurd

QUEUE = "bench"


def absurd_app(url):
    from absurd_sdk import Absurd

    app = Absurd(url, queue_name=QUEUE)

    @app.register_task(name="chain")
    def chain(params, ctx):
        first = None
        for index in range(params["steps"]):
            def body(i=index):
                return (time.time() - params["t0"]) if i == 0 else {"index": i}

            out = ctx.run_step(f"step_{index + 1}")(body)
            if index == 0:
                first = out
        return {"first": first, "end": time.time()}

    return app


def absurd_schema(url):
    import subprocess

    env = dict(os.environ, ABSURD_DATABASE_URL=url, PGDATABASE=url)
    exe = os.path.join(os.path.dirname(sys.executable), "absurdctl")
    subprocess.run([exe, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([exe, "create-queue", QUEUE], env=env, check=True, stdout=subprocess.DEVNULL)


def absurd_results(url, since=None):
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT params, completed_payload FROM absurd.t_{QUEUE} WHERE state = 'completed'"
        ).fetchall()
    return rows


def absurd_pending(url):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            f"SELECT count(*) FROM absurd.t_{QUEUE} WHERE state NOT IN ('completed', 'failed', 'cancelled')"
        ).fetchone()[0]


def absurd_worker(url, steps, count, threads, barrier, out):
    # `count` is unused: workers take tasks from the shared queue until it is empty.
    stop = threading.Event()
    apps = [absurd_app(url) for _ in range(threads)]

    def loop(app):
        while not stop.is_set():
            claimed = app.claim_tasks(batch_size=1, claim_timeout=120, worker_id=f"w{os.getpid()}")
            if not claimed:
                time.sleep(0.01)
                continue
            for task in claimed:
                # What the SDK's own start_worker() does with a claimed task.
                app._execute_task(task, 120)

    barrier.wait()
    ts = [threading.Thread(target=loop, args=(a,), daemon=True) for a in apps]
    for t in ts:
        t.start()
    while absurd_pending(url) > 0:
        time.sleep(0.05)
    stop.set()
    for t in ts:
        t.join()
    out.put([])


def run_absurd(args):
    db = "stepwise_peer_absurd"
    recreate(args.url, db)
    url = with_database(args.url, db)
    absurd_schema(url)
    app = absurd_app(url)
    # Idle latency: one worker thread, tasks spawned one at a time.
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            claimed = app_worker.claim_tasks(batch_size=1, claim_timeout=120, worker_id="idle")
            if not claimed:
                time.sleep(0.001)
                continue
            for task in claimed:
                app_worker._execute_task(task, 120)

    app_worker = absurd_app(url)
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    first, done = [], []
    for _ in range(args.idle_samples):
        t0 = time.time()
        spawned = app.spawn("chain", {"steps": args.steps, "t0": t0})
        task_id = spawned["task_id"] if isinstance(spawned, dict) else getattr(spawned, "task_id", None)
        while True:
            with app._conn.cursor() as cur:
                cur.execute(
                    f"SELECT completed_payload, state FROM absurd.t_{QUEUE} WHERE task_id = %s",
                    (task_id,),
                )
                row = cur.fetchone()
            if row and row[1] in ("failed", "cancelled"):
                raise RuntimeError(f"absurd task {task_id} ended {row[1]}")
            if row and row[1] == "completed":
                done.append(time.time() - t0)
                first.append(row[0]["first"])
                break
            time.sleep(0.0005)
        time.sleep(0.005)
    stop.set()
    th.join()
    # Throughput: spawn N, then the workers drain them.
    t0 = time.time()
    for _ in range(args.sagas):
        app.spawn("chain", {"steps": args.steps, "t0": t0})
    return throughput("absurd", args, url, absurd_worker, first, done)


# ------------------------------------------------------------------------------ common


def throughput(name, args, url, worker, idle_first, idle_done):
    ctx = mp.get_context("spawn")
    processes = max(1, min(args.processes, args.concurrency))
    threads = max(1, args.concurrency // processes)
    counts = [args.sagas // processes + (1 if i < args.sagas % processes else 0) for i in range(processes)]
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(url, args.steps, counts[i], threads, barrier, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    settle_stats()
    sc, commits0, wal0 = server_facts(url)
    barrier.wait()
    t0 = time.time()
    done = []
    for _ in procs:
        done.extend(out.get())
    elapsed = time.time() - t0
    for p in procs:
        p.join()
    settle_stats()
    _, commits1, wal1 = server_facts(url)
    steps = args.sagas * args.steps
    return {
        "peer": name,
        "version": peer_version(name),
        "sagas": args.sagas,
        "steps": args.steps,
        "concurrency": processes * threads,
        "processes": processes,
        "elapsed_s": round(elapsed, 3),
        "sagas_per_s": round(args.sagas / elapsed),
        "steps_per_s": round(steps / elapsed),
        "latency_ms": {
            "first_step_p50": percentile(idle_first, 0.5),
            "first_step_p99": percentile(idle_first, 0.99),
            "done_p50": percentile(idle_done, 0.5),
            "done_p99": percentile(idle_done, 0.99),
            "loaded_done_p50": percentile(done, 0.5) if done else None,
            "loaded_done_p99": percentile(done, 0.99) if done else None,
        },
        "per_step": {
            "commits": round((commits1 - commits0) / steps, 3),
            "wal_bytes": round((wal1 - wal0) / steps, 1),
        },
        "synchronous_commit": sc,
    }


def peer_version(name):
    from importlib.metadata import version

    return version("dbos" if name == "dbos" else "absurd-sdk")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("peer", choices=["dbos", "absurd"])
    parser.add_argument("--url", default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--idle-samples", type=int, default=50)
    args = parser.parse_args()
    args.url = args.url.replace("postgres://", "postgresql://", 1)
    result = run_dbos(args) if args.peer == "dbos" else run_absurd(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
