# Manifest helpers shared by tests/controller/run.sh and bench/controller.sh.
# runtime_template needs $IMAGE (the paddock-runtime image on the test bed).

# manifest KIND NAME -- an agents.kruise.io object; stdin is its `spec:` block
manifest() {
  printf 'apiVersion: agents.kruise.io/v1alpha1\nkind: %s\nmetadata: {name: %s}\n' "$1" "$2"
  cat
}

runtime_template() {
  # a pod template running the Paddock runtime (envd protocol on 49983)
  cat <<EOF
    metadata:
      labels: {app: sandbox}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: $IMAGE
          imagePullPolicy: Never
          env: [{name: REVISION, value: "$1"}]
          resources: ${2:-{\}}
          readinessProbe:
            httpGet: {path: /health, port: 49983}
            periodSeconds: 1
EOF
}
