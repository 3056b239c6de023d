"""The colours every figure uses, in the dashboard and in the HTML report alike, so a poisoned sample or
a training phase has one colour wherever it is drawn."""

CLEAN_COLOUR = "#1f77b4"
POISONED_COLOUR = "#d62728"
CLEAN_GREY = "#9aa5b1"  # clean samples beside the poisoned ones on poisoned-vs-clean maps and histograms
# One per training phase, in the order the phases come (more phases than colours wrap around).
PHASE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
# One per defense in a chart of several (the rate grid); the undefended model is always this grey.
SERIES_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
UNDEFENDED_COLOUR = "#7f7f7f"
