"""Face geometry shared by preprocessing, the sample generator, rendering and evaluation."""
