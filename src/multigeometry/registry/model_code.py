"""The registered pyfunc model as code (MLflow models-from-code): `log_pyfunc` logs this file as the model and the
`multigeometry` package beside it as code, so a registered version loads without this repository installed and
without unpickling a Python object (MLflow stores no python_model.pkl)."""

import mlflow

from multigeometry.registry.pyfunc import MultigeometryModel

mlflow.models.set_model(MultigeometryModel())
