"""The submit side: plan (build, place, transpile), dispatch (intents, the deferred queue, locks), run (dedupe, guard, submit, record), recovery."""
