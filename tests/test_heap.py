"""pigpt/model/heap.py: freed memory back to the OS during a decode of many rows."""

import torch


def test_the_decode_loop_hands_freed_memory_back_every_few_steps_of_many_rows(monkeypatch):
    """release() runs where the C library has malloc_trim (glibc; nothing elsewhere), and the decode loop calls it
    every RELEASE_EVERY steps when a step's logits reach RELEASE_BYTES, never for a few rows. Rollouts are the
    same tokens either way."""
    from pigpt.decoding import SamplingParams, generate
    from pigpt.model import GPT, GPTConfig, heap

    heap.release()  # callable on any C library
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=1000, block_size=64)).eval()
    calls = []
    monkeypatch.setattr(heap, "release", lambda: calls.append(1))
    monkeypatch.setattr(heap, "RELEASE_BYTES", 40 * 1000 * 4)  # 40 rows of this vocabulary
    sp = SamplingParams(temperature=1.0, max_new_tokens=20, n=40, seed=0, stop_token_ids=())
    many = generate(gpt, [[1, 2, 3]], sp)
    assert len(calls) == (20 - 1) // heap.RELEASE_EVERY  # after steps 7 and 15 (step 0's logits: the prefill's)
    calls.clear()
    few = generate(gpt, [[1, 2, 3]], SamplingParams(temperature=1.0, max_new_tokens=20, n=39, seed=0,
                                                    stop_token_ids=()))
    assert not calls
    assert [r.tokens for r in few[0]] == [r.tokens for r in many[0][:39]]  # seeds are per rollout
    monkeypatch.undo()
    if heap.available():  # glibc: the real call, in the loop
        assert [r.tokens for r in generate(gpt, [[1, 2, 3]], sp)[0]] == [r.tokens for r in many[0]]
