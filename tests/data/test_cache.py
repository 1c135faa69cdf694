from pimpic.data.cache import Cache


def test_fixture_cache_reads(make_cache):
    cache = Cache(make_cache(n_cases=5, shape=(16, 16, 16)))
    assert len(cache.case_ids) == 5
    cid = cache.train_ids()[0]
    assert cache.image(cid).shape == (16, 16, 16)
    assert set(cache.label(cid).ravel().tolist()) <= {0, 1, 2}
