# syntax=docker/dockerfile:1
#
# Images of the one-machine stack in docker-compose.yaml, one build target each:
#
#   airflow             (default) Airflow 3.3.2 with requirements.txt installed under Airflow's constraints
#   moto                moto server: S3 and CloudWatch Logs
#   sagemaker-emulator  the SageMaker Processing emulator running jobs with the BoltzGen simulator
#
# The BoltzGen processing image that SageMaker runs is include/processing_image/Dockerfile.

# ---------------------------------------------------------------------------------------------------
# moto server, pinned to the version the test suite runs against (requirements-dev.txt).
FROM python:3.11.11-slim-bookworm AS moto

RUN pip install --no-cache-dir "moto[server,s3,logs]==5.2.5" \
    && useradd --create-home --uid 50001 moto
USER 50001
EXPOSE 5000
CMD ["moto_server", "--host", "0.0.0.0", "--port", "5000"]

# ---------------------------------------------------------------------------------------------------
# The SageMaker Processing emulator and the BoltzGen simulator (local/), never deployed to AWS.
# The emulator runs each job as a process in this container: the step scripts need only python3
# and a `boltzgen` on PATH, which in simulated mode is the simulator.
FROM python:3.11.11-slim-bookworm AS sagemaker-emulator

WORKDIR /opt/boltzgen-airflow
# Third-party packages that local/ imports; tests/deploy checks this list against the sources.
RUN pip install --no-cache-dir "boto3>=1.37" "pyyaml>=6.0" "numpy>=1.26" "pandas>=2.1" "biopython>=1.84"
COPY pyproject.toml README.md ./
COPY local/ local/
COPY plugins/ plugins/
RUN pip install --no-cache-dir --no-deps .

RUN useradd --create-home --uid 50002 emulator \
    && mkdir -p /var/lib/sagemaker-emulator \
    && chown emulator /var/lib/sagemaker-emulator
USER 50002
ENV BOLTZGEN_ENGINE=sim \
    SAGEMAKER_EMULATOR_STATE=/var/lib/sagemaker-emulator
EXPOSE 4599
CMD ["python", "-m", "sagemaker_emulator.server", "--host", "0.0.0.0", "--port", "4599"]

# ---------------------------------------------------------------------------------------------------
# Airflow with this project's requirements. The image's own Airflow version is pinned again in the
# install so pip can never up- or downgrade it, and Airflow's published constraints for this exact
# version and Python keep every transitive dependency at the set Airflow was released and tested with.
FROM apache/airflow:3.3.2-python3.11 AS airflow

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
ARG CONSTRAINTS_URL=https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt

COPY --chown=airflow:0 requirements.txt /requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt --constraint "${CONSTRAINTS_URL}"

# dags/, plugins/ and include/ are mounted by docker-compose.yaml; plugins/ is on sys.path in every
# Airflow component, so boltzgen_airflow imports without being installed. 50000 is the image's
# `airflow` user.
USER 50000
