"""The one place where gllim_sk imports scikit-learn's private helpers.

scikit-learn does not promise to keep them; if one moves, only this module changes.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, Options, StrOptions

__all__ = ["Interval", "Options", "StrOptions", "_fit_context"]
