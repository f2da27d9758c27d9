"""Benchmark: a chapter's sections generated concurrently vs one after another, in one run.

Run: .venv/bin/python -m bench.chapter_parallel [--tps 20] [--chapters 3]
Prints time to first delta and total time per chapter for both, against the fake model
at a fixed token rate, through the real openai SDK and the server's own section pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import openai

from protocol.profile import Profile
from server.chapters.rewrite import personalize_prompt, split_chapter
from server.chapters.run import SECTION_CONCURRENCY, generate_sections
from server.chat.llm import Generation, OpenAIChatModel
from server.ingest.markdown.document import load_book
from server.settings import SAMPLE_BOOK_DIR
from server.tools.fake_llm import FakeLLM, FakeLLMConfig

PROFILE = Profile(software_background="web developer", hardware_background="none", level="beginner")


async def _time_one(model: OpenAIChatModel, markdown: str, concurrency: int) -> tuple[float, float]:
    sections = split_chapter(markdown)
    prompts = [personalize_prompt(s, PROFILE) for s in sections]
    started = time.perf_counter()
    first: list[float] = []

    def publish(piece: str) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    await generate_sections(
        sections,
        prompts,
        model,
        publish,
        Generation(prompt_tokens=0, completion_tokens=0),
        concurrency=concurrency,
    )
    return first[0], time.perf_counter() - started


async def main(tps: float, chapters: int) -> None:
    async with FakeLLM(FakeLLMConfig(echo=True, tokens_per_second=tps)) as fake:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="bench")
        model = OpenAIChatModel(client, "fake", max_tokens=4096, first_byte_s=60.0)
        book = load_book(SAMPLE_BOOK_DIR)[:chapters]
        rows = []
        for chapter in book:
            n = len(split_chapter(chapter.markdown))
            seq_first, seq_total = await _time_one(model, chapter.markdown, concurrency=1)
            par_first, par_total = await _time_one(
                model, chapter.markdown, concurrency=SECTION_CONCURRENCY
            )
            rows.append((chapter.id, n, seq_first, seq_total, par_first, par_total))
        await client.close()
    print(f"fake model at {tps:g} tokens/s; echo of each section (~1 token per word)\n")
    print(
        f"{'chapter':42} {'sections':>8} {'seq first':>10} {'seq total':>10} {'par first':>10} {'par total':>10} {'speed-up':>8}"
    )
    for cid, n, sf, st, pf, pt in rows:
        print(f"{cid:42} {n:>8} {sf:>9.2f}s {st:>9.2f}s {pf:>9.2f}s {pt:>9.2f}s {st / pt:>7.1f}x")
    speedup = statistics.mean(r[3] / r[5] for r in rows)
    print(
        f"\nmean total-time speed-up {speedup:.1f}x; first-delta times equal within the token interval"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument("--chapters", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.tps, args.chapters))
