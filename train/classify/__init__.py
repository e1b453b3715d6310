"""The paper's classification experiments (Sec. 3.1): training single- and multi-size,
the test views, the no-SPP / SPP comparison and the baselines."""
