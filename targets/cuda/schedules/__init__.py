"""GPU schedule rules: graphopt's own (window, elementwise), then dlight's, as one ordered list.

`rules.RULES` is the order `schedule-cuda` tries them in; the first that schedules a kernel
names it in the compile report (`scheduled_<rule>`).
"""
