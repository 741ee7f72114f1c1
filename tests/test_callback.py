"""Callbacks: the order of events in a fit, callbacks run by `order`, and what they see of the learner."""
from fastfreeze import Callback, Learner
from fastfreeze.core.callback import EVENTS
from helpers import mlp2


class EventLog(Callback):
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda: self.events.append(name)
        raise AttributeError(name)


def test_event_order(dls_5_batches):
    log = EventLog()
    learn = Learner(mlp2(), dls_5_batches, cbs=log, progress=False)
    learn.fit(1)
    ev = log.events
    assert ev[:4] == ["before_fit", "before_epoch", "before_train", "before_batch"]
    assert ev[4:10] == ["after_pred", "after_loss", "after_backward", "before_step", "after_step", "after_batch"]
    assert ev.count("after_step") == ev.count("before_step") == 5  # 5 training batches
    assert ev.count("after_batch") == 5 + 2  # + 2 validation batches (24 items, valid bs 16)
    i = ev.index("after_train")
    assert ev[i + 1] == "before_validate" and ev[-3:] == ["after_validate", "after_epoch", "after_fit"]


def test_callbacks_see_the_learner_state(dls_5_batches):
    seen = {}

    class Peek(Callback):
        def after_loss(self):
            if self.learn.training and self.learn.iter == 2:
                seen.update(epoch=self.learn.epoch, iter=self.learn.iter, x=self.learn.xb[0].shape,
                            y=self.learn.yb[0].shape, pred=self.learn.pred.shape, loss=self.learn.loss.ndim)
    Learner(mlp2(), dls_5_batches, cbs=Peek(), progress=False).fit(1)
    assert seen == dict(epoch=0, iter=2, x=(8, 4), y=(8,), pred=(8, 3), loss=0)


class Stamp(Callback):
    """Appends its name to a shared list in before_fit."""

    def __init__(self, name, order, log):
        self.name, self.order, self.log = name, order, log

    def before_fit(self):
        self.log.append(self.name)


def test_callbacks_run_by_order_then_in_the_order_they_were_added(dls_5_batches):
    log = []
    cbs = [Stamp("c", 10, log), Stamp("a", -5, log), Stamp("d", 10, log), Stamp("b", 0, log)]
    learn = Learner(mlp2(), dls_5_batches, progress=False, cbs=cbs[:2])
    learn.fit(1, cbs=cbs[2:])
    assert log == ["a", "b", "c", "d"]
    builtin = [type(cb).__name__ for cb in learn.cbs]
    assert builtin.index("Recorder") > builtin.index("Stamp")  # the Recorder (50) after user callbacks (0..10)


def test_a_plain_fit_calls_every_event_of_callback_events_but_the_cancel_ones(dls_5_batches):
    log = EventLog()
    Learner(mlp2(), dls_5_batches, cbs=log, progress=False).fit(1)
    assert set(log.events) == {e for e in EVENTS if not e.startswith("after_cancel")}
