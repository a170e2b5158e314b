from servefiles import Store


async def test_put_then_stat(store: Store) -> None:
    meta = await store.put("a.txt", b"hello")
    assert (await store.stat("a.txt")) == meta
