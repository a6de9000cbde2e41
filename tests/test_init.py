"""The choice among several starting partitions (gllim_sk._init), against independent
computations."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.metrics import r2_score

from gllim_sk import GLLiMRegressor, StudentGLLiMRegressor, _engine, _init


def make_data(gllim_ref, n_samples=2000, seed=0):
    params = gllim_ref.random_params(np.random.default_rng(seed), 3, 6, 2)
    X, y, _ = gllim_ref.sample(params, n_samples, np.random.default_rng(seed + 1))
    return X, y


@pytest.mark.parametrize(("requested", "n_samples", "n_components", "expected"), [
    (10, 100_000, 20, 10),  # 10 subsets of 10,000 rows, 500 per component
    (10, 20_000, 20, 10),  # exactly 100 per component
    (10, 19_999, 20, 9),
    (10, 6_400, 20, 3),
    (10, 3_999, 20, 1),  # not enough for two subsets of 100 per component
    (3, 1_000_000, 50, 3),
])
def test_candidate_count_keeps_100_rows_per_component(requested, n_samples, n_components,
                                                      expected):
    assert _init.candidate_count(requested, n_samples, n_components) == expected


@pytest.mark.parametrize(("n_features", "covariance_type", "n_latent", "expected"), [
    (1888, "diag", 0, 100),  # per-feature variances: no D x D covariance per component
    (1888, "tied", 0, 100),  # one covariance for all components, from all samples
    (50, "full", 0, 100),
    (500, "full", 0, 501),
    (1888, "diag", 4, 1889),  # the p-HOG's latent factors
    (20, "spherical", 2, 100),
])
def test_subsets_hold_more_than_d_rows_per_d_by_d_covariance(n_features, covariance_type,
                                                            n_latent, expected):
    assert _init.candidate_min_rows(n_features, covariance_type, n_latent) == expected
    # HOG-IR's 6,400 training heads and K = 20: one start with latent factors.
    count = _init.candidate_count(10, 6_400, 20, expected)
    assert count == (3 if expected == 100 else 1)


def test_candidate_rows_are_disjoint_subsets():
    rng = np.random.RandomState(0)
    rows, held_out = _init.candidate_rows(6_400, 3, 20, rng)
    assert len(rows) == 2_134 and len(held_out) == 2_134  # ceil(6400 / 3), twice
    assert np.all(np.diff(rows) > 0) and np.all(np.diff(held_out) > 0)
    assert not np.intersect1d(rows, held_out).size
    # Fewer rows left than a subset: all of them score.
    rows, held_out = _init.candidate_rows(5_000, 2, 20, rng)
    assert len(rows) == 2_500 and len(held_out) == 2_500
    rows, held_out = _init.candidate_rows(5_000, 2, 30, rng)
    assert len(rows) == 3_000 and len(held_out) == 2_000


@pytest.mark.parametrize("estimator", [GLLiMRegressor, StudentGLLiMRegressor])
@pytest.mark.parametrize("n_latent", [0, 1])
def test_prediction_score_of_the_errors_of_predict(gllim_ref, estimator, n_latent):
    X, y = make_data(gllim_ref)
    model = estimator(3, n_latent=n_latent, init_candidates=1, max_iter=20,
                      random_state=0).fit(X[:1000], y[:1000])
    X_new, y_new = X[1000:].copy(), y[1000:]
    X_new[:50] *= 10  # outliers: their weight in the score is bounded
    em_model = model._em_model(fitted=True)
    executor = _engine.SerialExecutor()
    # Centred as in the fit, in two blocks: the sums add up over blocks.
    Xc, yc = X_new - model.feature_mean_, y_new - model.target_mean_
    blocks = executor.blocks(em_model, Xc[:400], yc[:400]) + executor.blocks(
        em_model, Xc[400:], yc[400:])
    target_var = _init.target_variances(executor, blocks)
    assert_allclose(target_var, y_new.var(axis=0), rtol=1e-12)
    score = _init.prediction_score(em_model, executor, blocks, model._params, target_var)
    u = (y_new - model.predict(X_new)) ** 2 / y_new.var(axis=0)
    assert_allclose(score, 2 - np.mean(np.sum(u / (1 + u), axis=1)), rtol=1e-10)
    # Without outliers and with small errors, about the sum over targets of R^2.
    clean = _init.prediction_score(em_model, executor, executor.blocks(
        em_model, Xc[50:], yc[50:]), model._params, y_new[50:].var(axis=0))
    r2 = r2_score(y_new[50:], model.predict(X_new[50:]), multioutput="raw_values").sum()
    assert r2 <= clean < r2 + 0.1 * (2 - r2)  # u / (1 + u) <= u


def test_the_start_that_predicts_best_continues(gllim_ref, monkeypatch):
    # Record every run and its score: the one that continues is the best scored, and
    # scoring is on samples that the runs did not see.
    X, y = make_data(gllim_ref, n_samples=4000)
    runs = []
    best_start = _init.best_start

    def recording(make_start, run_short, score, n_candidates):
        def scored_run(start, settled):
            run = run_short(start, settled)
            runs.append((run, score(run[1])))
            return run
        return best_start(make_start, scored_run, score, n_candidates)

    monkeypatch.setattr(_init, "best_start", recording)
    model = GLLiMRegressor(3, init_candidates=4, max_iter=1, tol=0, random_state=0)
    model.fit(X, y)
    assert 3 <= len(runs) <= 4  # it may stop once 3 runs agree
    scores = [score for _, score in runs]
    chosen = runs[int(np.argmax(scores))][0][1]
    # max_iter=1: the fit's parameters are the chosen run's, evaluated on all samples.
    assert_allclose(model._params.A, chosen.A)
    assert_allclose(model._params.weights, chosen.weights)
    # Whatever the fit's max_iter, each run went on (tol=0 on the fit) until its score
    # settled, which is checked every CANDIDATE_CHECK_EVERY iterations, or for
    # CANDIDATE_MAX_ITER iterations.
    every = _init.CANDIDATE_CHECK_EVERY
    assert all(len(run[0]) % every == 0 and 2 * every <= len(run[0]) <= _init.CANDIDATE_MAX_ITER
               for run, _ in runs)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_latent_factors_on_few_samples_per_feature_start_as_init_candidates_1(gllim_ref):
    # 1,000 samples, K = 3, D = 200: three subsets of 333 samples with diagonal noise,
    # but with a latent factor each subset would need 201 per component: one start.
    rng = np.random.default_rng(0)
    y = rng.uniform(size=(1000, 2))
    X = np.hstack([y, y**2, np.sin(3 * y)]) @ rng.normal(size=(6, 200))
    X += 0.1 * rng.normal(size=X.shape)
    kw = dict(n_latent=1, random_state=0, max_iter=20)
    default = GLLiMRegressor(3, **kw).fit(X, y)
    single = GLLiMRegressor(3, init_candidates=1, **kw).fit(X, y)
    assert_allclose(default.lower_bounds_, single.lower_bounds_, rtol=0)
    assert_allclose(default.predict(X), single.predict(X), rtol=0)
    # Without the latent factor there are several starts, which end elsewhere.
    assert _init.candidate_count(10, 1000, 3, _init.candidate_min_rows(200, "diag", 0)) == 3


def test_few_samples_start_as_init_candidates_1(gllim_ref):
    # Below 200 samples per component there is one start, the single start's.
    X, y = make_data(gllim_ref, n_samples=500)
    default = GLLiMRegressor(3, random_state=0).fit(X, y)
    single = GLLiMRegressor(3, init_candidates=1, random_state=0).fit(X, y)
    assert_allclose(default.lower_bounds_, single.lower_bounds_, rtol=0)
    assert_allclose(default.predict(X), single.predict(X), rtol=0)


def test_best_start_keeps_the_best_score_and_stops_when_it_recurs():
    made = []

    def run_of(bounds_and_scores):
        def make_start(i):
            made.append(i)
            return i

        def run(i, settled):
            bound, _ = bounds_and_scores[i]
            return [bound], i, 1, True

        return _init.best_start(make_start, run, lambda i: bounds_and_scores[i][1],
                                len(bounds_and_scores))

    same = _init.CANDIDATE_SAME_SCORE / 2
    # The best (index 1) is reached again by 3 and 4: the third time stops the search.
    scores = [(0.0, 1.0), (0.0, 2.0), (0.0, 0.5), (0.0, 2.0 + same), (0.0, 2.0 - same),
              (0.0, 9.0)]
    (bounds, chosen, _, _), best = run_of(scores)
    assert chosen == 1 and best == 2.0 and made == [0, 1, 2, 3, 4]
    # A better score restarts the count; a non-finite likelihood never wins over a
    # finite one, and is returned only when every run has one.
    made.clear()
    scores = [(0.0, 1.0), (0.0, 1.0), (np.nan, 5.0), (0.0, 3.0), (0.0, 1.0)]
    (_, chosen, _, _), best = run_of(scores)
    assert chosen == 3 and best == 3.0 and made == [0, 1, 2, 3, 4]
    (_, chosen, _, _), best = run_of([(np.nan, 1.0), (-np.inf, 2.0)])
    assert chosen == 0 and best == -np.inf
    # Of runs at the same score, the one of highest likelihood continues (the score
    # stays the first's, so that the runs that count as hits do not drift).
    made.clear()
    scores = [(0.0, 2.0), (1.0, 2.0 + same), (0.5, 2.0), (9.0, 1.0)]
    (bounds, chosen, _, _), best = run_of(scores)
    assert chosen == 1 and bounds == [1.0] and best == 2.0 and made == [0, 1, 2]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_run_stops_once_its_prediction_score_has_settled(gllim_ref, monkeypatch):
    # A run's score is checked every CANDIDATE_CHECK_EVERY iterations once its likelihood
    # creeps (changes by less than CANDIDATE_CREEP); the run stops at the first check
    # whose score is within CANDIDATE_SAME_SCORE of the previous check's (tol=0: the
    # likelihood alone would never stop it), and the score it ends with is the
    # prediction score of its last parameters.
    X, y = make_data(gllim_ref, n_samples=4000)
    runs = []
    best_start = _init.best_start
    every, creep = _init.CANDIDATE_CHECK_EVERY, _init.CANDIDATE_CREEP

    def recording(make_start, run_short, score, n_candidates):
        def watched_run(start, settled):
            checks, due = [], []

            def check(bounds, params):
                stop = settled(bounds, params)
                if len(bounds) % every == 0 and abs(bounds[-1] - bounds[-2]) < creep:
                    due.append(len(bounds))
                if settled.params is params:  # scored after this iteration
                    checks.append((len(bounds), settled.value, score(params)))
                return stop

            run = run_short(start, check)
            runs.append((run[2], checks, due, score(run[1])))
            return run
        return best_start(make_start, watched_run, score, n_candidates)

    monkeypatch.setattr(_init, "best_start", recording)
    GLLiMRegressor(3, init_candidates=3, max_iter=1, tol=0, random_state=0).fit(X, y)
    assert len(runs) >= 2
    for n_iter, checks, due, final in runs:
        assert [n for n, _, _ in checks] == due
        assert all(value == independent for _, value, independent in checks)
        moves = [abs(b[1] - a[1]) for a, b in zip(checks, checks[1:], strict=False)]
        settled_at = next((i for i, move in enumerate(moves)
                           if move <= _init.CANDIDATE_SAME_SCORE), None)
        if settled_at is None:
            assert n_iter == _init.CANDIDATE_MAX_ITER
        else:
            assert n_iter == checks[settled_at + 1][0] and checks[-1][2] == final
    # The rule did stop runs here, well before CANDIDATE_MAX_ITER.
    assert any(n_iter < _init.CANDIDATE_MAX_ITER for n_iter, _, _, _ in runs)


def test_starting_runs_get_the_threads_the_whole_fit_had(gllim_ref, monkeypatch):
    # The whole problem's chunked executor holds BLAS to one thread per chunk; its
    # threads wait while the starting runs go on, so their executor may use all of them.
    from threadpoolctl import threadpool_limits

    made, make = [], _engine.make_executor

    def recording_make_executor(n_samples, work, xp=np):
        executor = make(n_samples, work, xp)
        made.append((n_samples, _engine.blas_thread_count(), type(executor).__name__))
        return executor

    monkeypatch.setattr(_engine, "make_executor", recording_make_executor)
    # Chunks from a small size on, so that the subsets are chunked as well.
    monkeypatch.setattr(_engine, "CHUNKED_PROBLEM_WORK", 1e6)
    X, y = gllim_ref.draw(0, n_samples=16_000, n_features=20, n_components=5)
    with threadpool_limits(limits=2):
        GLLiMRegressor(5, init_candidates=2, max_iter=2, tol=0, random_state=0).fit(X, y)
    whole, *subsets = made
    assert whole == (16_000, 2, "ThreadedExecutor")
    assert len(subsets) == 2  # the runs' subset and the rows that score them
    assert all(threads == 2 for _, threads, _ in subsets)
    assert subsets[0][2] == "ThreadedExecutor"
