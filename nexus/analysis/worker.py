"""The analysis worker: claims queued jobs, asks the model, stores the result (`nexus worker`).

One asyncio loop per process. Every `AI_WORKER_POLL_INTERVAL_MS` (or as soon as a job finishes) it runs
the watchdog, then claims jobs until `AI_WORKER_MAX_CONCURRENT_JOBS` run. Several workers on several
machines share the queue safely: a claim is one `FOR UPDATE SKIP LOCKED` update (`queue.claim`), and
each claim's token fences its writes. A job: read the branch's transcript (`transcript`), cut to the
token budget, ask the provider, validate the reply (`schema`); any failure counts an attempt and the
job goes back to the queue after a backoff (`AI_ANALYSIS_RETRY_BASE_DELAY_MS` x 2.5^n, capped, with
jitter) until `AI_ANALYSIS_MAX_RETRIES` are used up, then it is `failed` with the reason and the raw
reply. A job that runs past `AI_WORKER_JOB_TIMEOUT_MINUTES` is given up by its worker; one whose worker
died is returned to the queue by any worker's watchdog a minute later.

Database calls are never cancelled (nexus/storage/pools.py): the pool's hang guard ends a call to a
database that hangs; only the model call runs under the job's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time

from nexus.analysis import marker, queue
from nexus.analysis.prompt import SYSTEM_PROMPT, user_prompt
from nexus.analysis.providers import Provider, ProviderError, build_provider
from nexus.analysis.schema import InvalidReply, parse_reply, raw_excerpt, to_markdown
from nexus.analysis.transcript import Budget, load_transcript
from nexus.settings import Settings
from nexus.storage.pools import GuardedPool

log = logging.getLogger("nexus.analysis")
#: How long a stopping worker lets its jobs finish before it gives them back.
STOP_GRACE_S = 30.0
#: Longest one database call of the worker may hang before its connection is dropped.
DB_HANG_S = 30.0


def backoff_s(retry: int, base_ms: int, max_ms: int, rand: random.Random | None = None) -> float:
    """Wait before retry number `retry` (1 for the first): base x 2.5^(retry-1), capped, plus 0-30 % jitter."""
    delay = min(base_ms * 2.5 ** max(0, retry - 1), max_ms) / 1000
    return delay * (1 + (rand or random).random() * 0.3)


class Worker:
    def __init__(self, settings: Settings, database_url: str, provider: Provider | None = None) -> None:
        self.settings = settings
        self.database_url = database_url
        self.provider = provider or build_provider(settings)
        self.id = f"{socket.gethostname()[:60]}:{os.getpid()}"
        self.poll_s = settings.ai_worker_poll_interval_s
        self.max_jobs = settings.ai_worker_max_concurrent_jobs
        self.job_timeout_s = settings.ai_worker_job_timeout_minutes * 60.0
        self.running: dict[asyncio.Task[None], tuple[queue.Job, bytes]] = {}
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.pool: GuardedPool | None = None
        self.done = 0
        self.failed_attempts = 0

    def budget(self) -> Budget:
        s = self.settings
        return Budget(
            s.ai_analysis_input_truncation_target_tokens,
            s.ai_analysis_truncate_first_n_tokens,
            s.ai_analysis_truncate_last_m_tokens,
            s.ai_estimated_chars_per_token,
        )

    async def run(self) -> None:
        self.pool = GuardedPool(
            self.database_url,
            min_size=1,
            max_size=self.max_jobs + 1,
            open=False,
            timeout=10,
            hang_after_s=DB_HANG_S,
            kwargs={"application_name": "nexus-analysis-worker", "connect_timeout": 5, "autocommit": True},
        )
        await self.pool.open(wait=False)
        log.info(
            "analysis worker %s: provider %s, model %s, %d job(s) at once",
            self.id,
            self.provider.name,
            self.provider.model,
            self.max_jobs,
        )
        try:
            while not self.stopping.is_set():
                try:
                    await self.tick()
                except Exception as exc:  # the database away: try again next poll
                    log.warning("analysis worker: poll failed (%s: %s)", exc.__class__.__name__, str(exc)[:200])
                self.wake.clear()
                waits = [asyncio.ensure_future(self.stopping.wait()), asyncio.ensure_future(self.wake.wait())]
                await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            await self._stop_jobs()
            await self.provider.close()
            await self.pool.close()

    async def tick(self) -> None:
        """The watchdog, then claims until the worker is full or the queue has nothing ready."""
        assert self.pool is not None
        async with self.pool.connection() as conn:
            for job_id, status in await queue.return_stuck(
                conn, self.job_timeout_s, self.settings.ai_analysis_max_retries
            ):
                log.warning("analysis job %d was stuck in processing; the watchdog made it %s", job_id, status)
            while len(self.running) < self.max_jobs and not self.stopping.is_set():
                token = marker.new_token()
                job = await queue.claim(conn, self.id, marker.token_hash(token))
                if job is None:
                    break
                task = asyncio.ensure_future(self.run_job(job, token))
                self.running[task] = (job, marker.token_hash(token))
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        job, _ = self.running.pop(task, (None, b""))
        if not task.cancelled() and (exc := task.exception()) is not None:  # its database write failed
            log.warning(
                "analysis job %s: its outcome was not stored (%s); the watchdog will return it to the queue",
                job.id if job is not None else "?",
                exc.__class__.__name__,
            )
        self.wake.set()  # a free slot: look for the next job at once

    async def run_job(self, job: queue.Job, token: str) -> None:
        started = time.monotonic()
        hashed = marker.token_hash(token)
        provider = self.provider
        raw: str | None = None
        request_id: str | None = None
        try:
            assert self.pool is not None
            async with self.pool.connection() as conn:
                transcript = await load_transcript(conn, job.conversation_id, job.branch_id, self.budget())
            if not transcript.turns:
                raise ProviderError("no answered request of this branch is stored")
            prompt = user_prompt(transcript.render(), transcript.turns, transcript.omitted, job.custom_prompt)
            async with asyncio.timeout(self.job_timeout_s):
                reply = await provider.ask(SYSTEM_PROMPT, prompt, job.id, token)
            request_id, raw = reply.request_id, reply.text
            data = parse_reply(reply.text)
        except (ProviderError, InvalidReply, TimeoutError) as exc:
            reason = "the job ran past AI_WORKER_JOB_TIMEOUT_MINUTES" if isinstance(exc, TimeoutError) else str(exc)
            raw = raw if raw is not None else getattr(exc, "raw", None)
            await self._failed(job, hashed, reason, raw, request_id)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("analysis job %d failed unexpectedly", job.id)
            await self._failed(job, hashed, f"internal error ({exc.__class__.__name__})", raw, request_id)
            return
        async with self.pool.connection() as conn:
            stored = await queue.complete(
                conn,
                job,
                hashed,
                data=data,
                content=to_markdown(data),
                provider=provider.name,
                model=reply.model,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                duration_ms=int((time.monotonic() - started) * 1000),
                request_id=request_id,
            )
        self.done += 1
        if stored:
            log.info(
                "analysis job %d completed (conversation %s, branch %s)", job.id, job.conversation_id, job.branch_id
            )
        else:
            log.warning("analysis job %d: result not stored, the job was taken back meanwhile", job.id)

    async def _failed(
        self, job: queue.Job, hashed: bytes, reason: str, raw: str | None, request_id: str | None
    ) -> None:
        self.failed_attempts += 1
        s = self.settings
        delay = backoff_s(job.retry_count + 1, s.ai_analysis_retry_base_delay_ms, s.ai_analysis_retry_max_delay_ms)
        assert self.pool is not None
        async with self.pool.connection() as conn:
            status = await queue.fail_attempt(
                conn,
                job,
                hashed,
                error=reason[:500],
                raw=raw_excerpt(raw) if raw is not None else None,
                max_retries=s.ai_analysis_max_retries,
                delay_s=delay,
                provider=self.provider.name,
                model=self.provider.model,
                request_id=request_id,
            )
        log.warning("analysis job %d attempt %d failed (%s); now %s", job.id, job.attempts, reason[:200], status)

    async def _stop_jobs(self) -> None:
        """Let running jobs finish for a while, then give the rest back to the queue uncounted."""
        if not self.running:
            return
        _, pending = await asyncio.wait(list(self.running), timeout=STOP_GRACE_S)
        held = [self.running[t] for t in pending if t in self.running]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if held and self.pool is not None:
            async with self.pool.connection() as conn:
                for job, hashed in held:
                    await queue.release(conn, job, hashed)

    def stop(self) -> None:
        self.stopping.set()


def run_worker(settings: Settings, database_url: str) -> None:
    """Run until SIGTERM / SIGINT (`nexus worker`)."""

    async def main() -> None:
        worker = Worker(settings, database_url)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())


__all__ = ["Worker", "backoff_s", "run_worker"]
