"""Kubernetes protobuf request bodies, decoded to the object's JSON form.

kubectl's typed commands (`create namespace|configmap|secret|deployment|service|ingress`) build Go
structs and send them as `application/vnd.kubernetes.protobuf`. The body is kube's envelope: the
four bytes ``k8s\\x00`` and a `runtime.Unknown` message

    Unknown { TypeMeta typeMeta = 1 { apiVersion = 1; kind = 2 }; bytes raw = 2;
              string contentEncoding = 3; string contentType = 4 }

whose `raw` is the object's own message (without TypeMeta: it is in the envelope). This module
decodes that with a small schema-driven wire decoder (varint, 64-bit, length-delimited and 32-bit
fields) and the message table below, whose field numbers come from the `generated.proto` files of
k8s.io/api (core/v1, apps/v1, networking/v1, discovery/v1, coordination/v1) and k8s.io/apimachinery
(meta/v1, runtime, util/intstr, api/resource). No protobuf library is needed: the table is the only
thing a generated decoder would add, and kube's messages are plain proto2.

Zero values and JSON: Go's generated marshallers write every non-pointer field, even when empty,
while kube's JSON leaves empty ones out (`omitempty`). So a zero scalar is dropped unless its
schema entry ends in "!" - a pointer field such as `spec.replicas`, where an explicit 0 means
something, or a field whose JSON has no `omitempty`. A nested message is kept whenever it is on the
wire, `{}` included (`emptyDir: {}` is meaningful; `resources: {}` is what kube prints), except a
zero Time, which kube's JSON leaves out. Unknown fields are skipped, as kube's decoder skips them;
a body that is not well-formed protobuf raises `ProtobufError`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from netplane.api import resources

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a well-formed Kubernetes protobuf object that this server can decode."""


# -- the schema table ------------------------------------------------------------------------------
#
# One line per message: "Name: <num> <jsonName> [type]; ...". The type defaults to string. Types:
#   string, bytes (base64 in JSON), int32, int64, bool    scalars
#   Time, MicroTime, Quantity, IntOrString, FieldsV1      apimachinery types with their own JSON form
#   []T                                                   repeated T
#   map, map<bytes>, map<Quantity>                        map<string, string|bytes|Quantity>
#   <Message>                                             a nested message from this table
# A trailing "!" keeps a present zero value. The JSON name "-" inlines an embedded struct's fields
# into the parent, as Go's `json:",inline"` does.

_SCHEMA = """
ObjectMeta: 1 name; 2 generateName; 3 namespace; 4 selfLink; 5 uid; 6 resourceVersion; 7 generation int64;
  8 creationTimestamp Time; 9 deletionTimestamp Time; 10 deletionGracePeriodSeconds int64!; 11 labels map;
  12 annotations map; 13 ownerReferences []OwnerReference; 14 finalizers []string;
  17 managedFields []ManagedFieldsEntry
OwnerReference: 5 apiVersion string!; 1 kind string!; 3 name string!; 4 uid string!; 6 controller bool!;
  7 blockOwnerDeletion bool!
ManagedFieldsEntry: 1 manager; 2 operation; 3 apiVersion; 4 time Time; 6 fieldsType; 7 fieldsV1 FieldsV1;
  8 subresource
LabelSelector: 1 matchLabels map; 2 matchExpressions []LabelSelectorRequirement
LabelSelectorRequirement: 1 key string!; 2 operator string!; 3 values []string
Condition: 1 type string!; 2 status string!; 3 observedGeneration int64; 4 lastTransitionTime Time!;
  5 reason string!; 6 message string!

Namespace: 1 metadata ObjectMeta; 2 spec NamespaceSpec; 3 status NamespaceStatus
NamespaceSpec: 1 finalizers []string
NamespaceStatus: 1 phase; 2 conditions []NamespaceCondition
NamespaceCondition: 1 type; 2 status; 4 lastTransitionTime Time; 5 reason; 6 message

Node: 1 metadata ObjectMeta; 2 spec NodeSpec; 3 status NodeStatus
NodeSpec: 1 podCIDR; 7 podCIDRs []string; 3 providerID; 4 unschedulable bool; 5 taints []Taint;
  6 configSource NodeConfigSource; 2 externalID
NodeConfigSource: 2 configMap ConfigMapNodeConfigSource
ConfigMapNodeConfigSource: 1 namespace string!; 2 name string!; 3 uid; 4 resourceVersion;
  5 kubeletConfigKey string!
Taint: 1 key string!; 2 value; 3 effect string!; 4 timeAdded Time
NodeStatus: 1 capacity map<Quantity>; 2 allocatable map<Quantity>; 3 phase; 4 conditions []NodeCondition;
  5 addresses []NodeAddress; 6 daemonEndpoints NodeDaemonEndpoints; 7 nodeInfo NodeSystemInfo;
  8 images []ContainerImage; 9 volumesInUse []string; 10 volumesAttached []AttachedVolume;
  11 config NodeConfigStatus; 12 runtimeHandlers []NodeRuntimeHandler; 13 features NodeFeatures;
  14 declaredFeatures []string
NodeCondition: 1 type string!; 2 status string!; 3 lastHeartbeatTime Time; 4 lastTransitionTime Time;
  5 reason; 6 message
NodeAddress: 1 type string!; 2 address string!
NodeDaemonEndpoints: 1 kubeletEndpoint DaemonEndpoint
DaemonEndpoint: 1 Port int32!
NodeSystemInfo: 1 machineID string!; 2 systemUUID string!; 3 bootID string!; 4 kernelVersion string!;
  5 osImage string!; 6 containerRuntimeVersion string!; 7 kubeletVersion string!; 8 kubeProxyVersion string!;
  9 operatingSystem string!; 10 architecture string!; 11 swap NodeSwapStatus
NodeSwapStatus: 1 capacity int64!
ContainerImage: 1 names []string; 2 sizeBytes int64
AttachedVolume: 1 name string!; 2 devicePath string!
NodeConfigStatus: 1 assigned NodeConfigSource; 2 active NodeConfigSource; 3 lastKnownGood NodeConfigSource;
  4 error
NodeRuntimeHandler: 1 name; 2 features NodeRuntimeHandlerFeatures
NodeRuntimeHandlerFeatures: 1 recursiveReadOnlyMounts bool!; 2 userNamespaces bool!
NodeFeatures: 1 supplementalGroupsPolicy bool!; 2 containerUlimits bool!

Pod: 1 metadata ObjectMeta; 2 spec PodSpec; 3 status PodStatus
PodTemplateSpec: 1 metadata ObjectMeta; 2 spec PodSpec
PodSpec: 1 volumes []Volume; 20 initContainers []Container; 2 containers []Container;
  34 ephemeralContainers []EphemeralContainer; 3 restartPolicy; 4 terminationGracePeriodSeconds int64!;
  5 activeDeadlineSeconds int64!; 6 dnsPolicy; 7 nodeSelector map; 8 serviceAccountName; 9 serviceAccount;
  21 automountServiceAccountToken bool!; 10 nodeName; 11 hostNetwork bool; 12 hostPID bool; 13 hostIPC bool;
  27 shareProcessNamespace bool!; 14 securityContext PodSecurityContext;
  15 imagePullSecrets []LocalObjectReference; 16 hostname; 17 subdomain; 18 affinity Affinity;
  19 schedulerName; 22 tolerations []Toleration; 23 hostAliases []HostAlias; 24 priorityClassName;
  25 priority int32!; 26 dnsConfig PodDNSConfig; 28 readinessGates []PodReadinessGate;
  29 runtimeClassName string!; 30 enableServiceLinks bool!; 31 preemptionPolicy string!;
  32 overhead map<Quantity>; 33 topologySpreadConstraints []TopologySpreadConstraint;
  35 setHostnameAsFQDN bool!; 36 os PodOS; 37 hostUsers bool!; 38 schedulingGates []PodSchedulingGate;
  39 resourceClaims []PodResourceClaim; 40 resources ResourceRequirements; 41 hostnameOverride string!;
  42 workloadRef WorkloadReference
Container: 1 name string!; 2 image; 3 command []string; 4 args []string; 5 workingDir; 6 ports []ContainerPort;
  19 envFrom []EnvFromSource; 7 env []EnvVar; 8 resources ResourceRequirements;
  23 resizePolicy []ContainerResizePolicy; 24 restartPolicy string!; 25 restartPolicyRules []ContainerRestartRule;
  9 volumeMounts []VolumeMount; 21 volumeDevices []VolumeDevice; 10 livenessProbe Probe;
  11 readinessProbe Probe; 22 startupProbe Probe; 12 lifecycle Lifecycle; 13 terminationMessagePath;
  20 terminationMessagePolicy; 14 imagePullPolicy; 15 securityContext SecurityContext; 16 stdin bool;
  17 stdinOnce bool; 18 tty bool
EphemeralContainer: 1 - Container; 2 targetContainerName
ContainerPort: 1 name; 2 hostPort int32; 3 containerPort int32!; 4 protocol; 5 hostIP
ContainerResizePolicy: 1 resourceName string!; 2 restartPolicy string!
ContainerRestartRule: 1 action; 2 exitCodes ContainerRestartRuleOnExitCodes
ContainerRestartRuleOnExitCodes: 1 operator; 2 values []int32
EnvFromSource: 1 prefix; 2 configMapRef ConfigMapEnvSource; 3 secretRef SecretEnvSource
ConfigMapEnvSource: 1 - LocalObjectReference; 2 optional bool!
SecretEnvSource: 1 - LocalObjectReference; 2 optional bool!
EnvVar: 1 name string!; 2 value; 3 valueFrom EnvVarSource
EnvVarSource: 1 fieldRef ObjectFieldSelector; 2 resourceFieldRef ResourceFieldSelector;
  3 configMapKeyRef ConfigMapKeySelector; 4 secretKeyRef SecretKeySelector; 5 fileKeyRef FileKeySelector
ObjectFieldSelector: 1 apiVersion; 2 fieldPath string!
ResourceFieldSelector: 1 containerName; 2 resource string!; 3 divisor Quantity
ConfigMapKeySelector: 1 - LocalObjectReference; 2 key string!; 3 optional bool!
SecretKeySelector: 1 - LocalObjectReference; 2 key string!; 3 optional bool!
FileKeySelector: 1 volumeName string!; 2 path string!; 3 key string!; 4 optional bool!
LocalObjectReference: 1 name
ResourceRequirements: 1 limits map<Quantity>; 2 requests map<Quantity>; 3 claims []ResourceClaim
ResourceClaim: 1 name string!; 2 request
VolumeMount: 1 name string!; 2 readOnly bool; 7 recursiveReadOnly string!; 3 mountPath string!; 4 subPath;
  5 mountPropagation string!; 6 subPathExpr
VolumeDevice: 1 name string!; 2 devicePath string!
Probe: 1 - ProbeHandler; 2 initialDelaySeconds int32; 3 timeoutSeconds int32; 4 periodSeconds int32;
  5 successThreshold int32; 6 failureThreshold int32; 7 terminationGracePeriodSeconds int64!
ProbeHandler: 1 exec ExecAction; 2 httpGet HTTPGetAction; 3 tcpSocket TCPSocketAction; 4 grpc GRPCAction
ExecAction: 1 command []string
HTTPGetAction: 1 path; 2 port IntOrString; 3 host; 4 scheme; 5 httpHeaders []HTTPHeader
HTTPHeader: 1 name string!; 2 value string!
TCPSocketAction: 1 port IntOrString; 2 host
GRPCAction: 1 port int32!; 2 service string!
Lifecycle: 1 postStart LifecycleHandler; 2 preStop LifecycleHandler; 3 stopSignal string!
LifecycleHandler: 1 exec ExecAction; 2 httpGet HTTPGetAction; 3 tcpSocket TCPSocketAction; 4 sleep SleepAction
SleepAction: 1 seconds int64!
SecurityContext: 1 capabilities Capabilities; 2 privileged bool!; 3 seLinuxOptions SELinuxOptions;
  10 windowsOptions WindowsSecurityContextOptions; 4 runAsUser int64!; 8 runAsGroup int64!;
  5 runAsNonRoot bool!; 6 readOnlyRootFilesystem bool!; 7 allowPrivilegeEscalation bool!; 9 procMount string!;
  11 seccompProfile SeccompProfile; 12 appArmorProfile AppArmorProfile; 13 ulimits []Ulimit
Capabilities: 1 add []string; 2 drop []string
Ulimit: 1 name string!; 2 hard int64!; 3 soft int64!
SELinuxOptions: 1 user; 2 role; 3 type; 4 level
WindowsSecurityContextOptions: 1 gmsaCredentialSpecName string!; 2 gmsaCredentialSpec string!;
  3 runAsUserName string!; 4 hostProcess bool!
SeccompProfile: 1 type string!; 2 localhostProfile string!
AppArmorProfile: 1 type string!; 2 localhostProfile string!
PodSecurityContext: 1 seLinuxOptions SELinuxOptions; 8 windowsOptions WindowsSecurityContextOptions;
  2 runAsUser int64!; 6 runAsGroup int64!; 3 runAsNonRoot bool!; 4 supplementalGroups []int64;
  12 supplementalGroupsPolicy string!; 5 fsGroup int64!; 7 sysctls []Sysctl; 9 fsGroupChangePolicy string!;
  10 seccompProfile SeccompProfile; 11 appArmorProfile AppArmorProfile; 13 seLinuxChangePolicy string!
Sysctl: 1 name string!; 2 value string!
Volume: 1 name string!; 2 - VolumeSource
VolumeSource: 1 hostPath HostPathVolumeSource; 2 emptyDir EmptyDirVolumeSource; 5 gitRepo GitRepoVolumeSource;
  6 secret SecretVolumeSource; 7 nfs NFSVolumeSource; 10 persistentVolumeClaim PersistentVolumeClaimVolumeSource;
  16 downwardAPI DownwardAPIVolumeSource; 19 configMap ConfigMapVolumeSource; 26 projected ProjectedVolumeSource;
  28 csi CSIVolumeSource; 29 ephemeral EphemeralVolumeSource; 30 image ImageVolumeSource
HostPathVolumeSource: 1 path string!; 2 type string!
EmptyDirVolumeSource: 1 medium; 2 sizeLimit Quantity
GitRepoVolumeSource: 1 repository string!; 2 revision; 3 directory
SecretVolumeSource: 1 secretName; 2 items []KeyToPath; 3 defaultMode int32!; 4 optional bool!
KeyToPath: 1 key string!; 2 path string!; 3 mode int32!
NFSVolumeSource: 1 server string!; 2 path string!; 3 readOnly bool
PersistentVolumeClaimVolumeSource: 1 claimName string!; 2 readOnly bool
DownwardAPIVolumeSource: 1 items []DownwardAPIVolumeFile; 2 defaultMode int32!
DownwardAPIVolumeFile: 1 path string!; 2 fieldRef ObjectFieldSelector; 3 resourceFieldRef ResourceFieldSelector;
  4 mode int32!
ConfigMapVolumeSource: 1 - LocalObjectReference; 2 items []KeyToPath; 3 defaultMode int32!; 4 optional bool!
ProjectedVolumeSource: 1 sources []VolumeProjection; 2 defaultMode int32!
VolumeProjection: 1 secret SecretProjection; 2 downwardAPI DownwardAPIProjection; 3 configMap ConfigMapProjection;
  4 serviceAccountToken ServiceAccountTokenProjection; 5 clusterTrustBundle ClusterTrustBundleProjection;
  6 podCertificate PodCertificateProjection
SecretProjection: 1 - LocalObjectReference; 2 items []KeyToPath; 4 optional bool!
ConfigMapProjection: 1 - LocalObjectReference; 2 items []KeyToPath; 4 optional bool!
DownwardAPIProjection: 1 items []DownwardAPIVolumeFile
ServiceAccountTokenProjection: 1 audience; 2 expirationSeconds int64!; 3 path string!
ClusterTrustBundleProjection: 1 name string!; 2 signerName string!; 3 labelSelector LabelSelector;
  5 optional bool!; 4 path string!
PodCertificateProjection: 1 signerName; 2 keyType; 3 maxExpirationSeconds int32!; 4 credentialBundlePath;
  5 keyPath; 6 certificateChainPath; 7 userAnnotations map
CSIVolumeSource: 1 driver string!; 2 readOnly bool!; 3 fsType string!; 4 volumeAttributes map;
  5 nodePublishSecretRef LocalObjectReference
EphemeralVolumeSource: 1 volumeClaimTemplate PersistentVolumeClaimTemplate
PersistentVolumeClaimTemplate: 1 metadata ObjectMeta; 2 spec PersistentVolumeClaimSpec
PersistentVolumeClaimSpec: 1 accessModes []string; 4 selector LabelSelector; 2 resources VolumeResourceRequirements;
  3 volumeName; 5 storageClassName string!; 6 volumeMode string!; 7 dataSource TypedLocalObjectReference;
  8 dataSourceRef TypedObjectReference; 9 volumeAttributesClassName string!
VolumeResourceRequirements: 1 limits map<Quantity>; 2 requests map<Quantity>
TypedLocalObjectReference: 1 apiGroup string!; 2 kind string!; 3 name string!
TypedObjectReference: 1 apiGroup string!; 2 kind string!; 3 name string!; 4 namespace string!
ImageVolumeSource: 1 reference; 2 pullPolicy
Toleration: 1 key; 2 operator; 3 value; 4 effect; 5 tolerationSeconds int64!
HostAlias: 1 ip string!; 2 hostnames []string
PodDNSConfig: 1 nameservers []string; 2 searches []string; 3 options []PodDNSConfigOption
PodDNSConfigOption: 1 name; 2 value string!
PodReadinessGate: 1 conditionType string!
PodOS: 1 name string!
PodSchedulingGate: 1 name string!
PodResourceClaim: 1 name string!; 3 resourceClaimName string!; 4 resourceClaimTemplateName string!
WorkloadReference: 1 name; 2 podGroup; 3 podGroupReplicaKey
TopologySpreadConstraint: 1 maxSkew int32!; 2 topologyKey string!; 3 whenUnsatisfiable string!;
  4 labelSelector LabelSelector; 5 minDomains int32!; 6 nodeAffinityPolicy string!; 7 nodeTaintsPolicy string!;
  8 matchLabelKeys []string
Affinity: 1 nodeAffinity NodeAffinity; 2 podAffinity PodAffinity; 3 podAntiAffinity PodAntiAffinity
NodeAffinity: 1 requiredDuringSchedulingIgnoredDuringExecution NodeSelector;
  2 preferredDuringSchedulingIgnoredDuringExecution []PreferredSchedulingTerm
NodeSelector: 1 nodeSelectorTerms []NodeSelectorTerm
NodeSelectorTerm: 1 matchExpressions []NodeSelectorRequirement; 2 matchFields []NodeSelectorRequirement
NodeSelectorRequirement: 1 key string!; 2 operator string!; 3 values []string
PreferredSchedulingTerm: 1 weight int32!; 2 preference NodeSelectorTerm
PodAffinity: 1 requiredDuringSchedulingIgnoredDuringExecution []PodAffinityTerm;
  2 preferredDuringSchedulingIgnoredDuringExecution []WeightedPodAffinityTerm
PodAntiAffinity: 1 requiredDuringSchedulingIgnoredDuringExecution []PodAffinityTerm;
  2 preferredDuringSchedulingIgnoredDuringExecution []WeightedPodAffinityTerm
PodAffinityTerm: 1 labelSelector LabelSelector; 2 namespaces []string; 3 topologyKey string!;
  4 namespaceSelector LabelSelector; 5 matchLabelKeys []string; 6 mismatchLabelKeys []string
WeightedPodAffinityTerm: 1 weight int32!; 2 podAffinityTerm PodAffinityTerm
PodStatus: 17 observedGeneration int64; 1 phase; 2 conditions []PodCondition; 3 message; 4 reason;
  11 nominatedNodeName; 5 hostIP; 16 hostIPs []HostIP; 6 podIP; 12 podIPs []PodIP; 7 startTime Time;
  10 initContainerStatuses []ContainerStatus; 8 containerStatuses []ContainerStatus; 9 qosClass;
  13 ephemeralContainerStatuses []ContainerStatus; 14 resize; 15 resourceClaimStatuses []PodResourceClaimStatus;
  19 allocatedResources map<Quantity>; 20 resources ResourceRequirements
PodCondition: 1 type string!; 7 observedGeneration int64; 2 status string!; 3 lastProbeTime Time;
  4 lastTransitionTime Time; 5 reason; 6 message
HostIP: 1 ip string!
PodIP: 1 ip string!
PodResourceClaimStatus: 1 name string!; 2 resourceClaimName string!
ContainerStatus: 1 name string!; 2 state ContainerState; 3 lastState ContainerState; 4 ready bool!;
  5 restartCount int32!; 6 image string!; 7 imageID string!; 8 containerID; 9 started bool!;
  10 allocatedResources map<Quantity>; 11 resources ResourceRequirements; 12 volumeMounts []VolumeMountStatus;
  13 user ContainerUser; 14 allocatedResourcesStatus []ResourceStatus; 15 stopSignal string!
ContainerState: 1 waiting ContainerStateWaiting; 2 running ContainerStateRunning;
  3 terminated ContainerStateTerminated
ContainerStateWaiting: 1 reason; 2 message
ContainerStateRunning: 1 startedAt Time
ContainerStateTerminated: 1 exitCode int32!; 2 signal int32; 3 reason; 4 message; 5 startedAt Time;
  6 finishedAt Time; 7 containerID
VolumeMountStatus: 1 name string!; 2 mountPath string!; 3 readOnly bool; 4 recursiveReadOnly string!
ContainerUser: 1 linux LinuxContainerUser
LinuxContainerUser: 1 uid int64!; 2 gid int64!; 3 supplementalGroups []int64
ResourceStatus: 1 name string!; 2 resources []ResourceHealth
ResourceHealth: 1 resourceID string!; 2 health; 6 message string!

Service: 1 metadata ObjectMeta; 2 spec ServiceSpec; 3 status ServiceStatus
ServiceSpec: 1 ports []ServicePort; 2 selector map; 3 clusterIP; 18 clusterIPs []string; 4 type;
  5 externalIPs []string; 7 sessionAffinity; 8 loadBalancerIP; 9 loadBalancerSourceRanges []string;
  10 externalName; 11 externalTrafficPolicy; 12 healthCheckNodePort int32; 13 publishNotReadyAddresses bool;
  14 sessionAffinityConfig SessionAffinityConfig; 19 ipFamilies []string; 17 ipFamilyPolicy string!;
  20 allocateLoadBalancerNodePorts bool!; 21 loadBalancerClass string!; 22 internalTrafficPolicy string!;
  23 trafficDistribution string!
ServicePort: 1 name; 2 protocol; 6 appProtocol string!; 3 port int32!; 4 targetPort IntOrString; 5 nodePort int32
SessionAffinityConfig: 1 clientIP ClientIPConfig
ClientIPConfig: 1 timeoutSeconds int32!
ServiceStatus: 1 loadBalancer LoadBalancerStatus; 2 conditions []Condition
LoadBalancerStatus: 1 ingress []LoadBalancerIngress
LoadBalancerIngress: 1 ip; 2 hostname; 3 ipMode string!; 4 ports []PortStatus
PortStatus: 1 port int32!; 2 protocol string!; 3 error string!

Secret: 1 metadata ObjectMeta; 5 immutable bool!; 2 data map<bytes>; 4 stringData map; 3 type
ConfigMap: 1 metadata ObjectMeta; 4 immutable bool!; 2 data map; 3 binaryData map<bytes>

Event: 1 metadata ObjectMeta; 2 involvedObject ObjectReference; 3 reason; 4 message; 5 source EventSource;
  6 firstTimestamp Time; 7 lastTimestamp Time; 8 count int32; 9 type; 10 eventTime MicroTime;
  11 series EventSeries; 12 action; 13 related ObjectReference; 14 reportingComponent string!;
  15 reportingInstance string!
EventSource: 1 component; 2 host
EventSeries: 1 count int32; 2 lastObservedTime MicroTime
ObjectReference: 1 kind; 2 namespace; 3 name; 4 uid; 5 apiVersion; 6 resourceVersion; 7 fieldPath

Deployment: 1 metadata ObjectMeta; 2 spec DeploymentSpec; 3 status DeploymentStatus
DeploymentSpec: 1 replicas int32!; 2 selector LabelSelector; 3 template PodTemplateSpec;
  4 strategy DeploymentStrategy; 5 minReadySeconds int32; 6 revisionHistoryLimit int32!; 7 paused bool;
  9 progressDeadlineSeconds int32!; 10 podReplacementPolicy string!
DeploymentStrategy: 1 type; 2 rollingUpdate RollingUpdateDeployment
RollingUpdateDeployment: 1 maxUnavailable IntOrString; 2 maxSurge IntOrString
DeploymentStatus: 1 observedGeneration int64; 2 replicas int32; 3 updatedReplicas int32; 7 readyReplicas int32;
  4 availableReplicas int32; 5 unavailableReplicas int32; 9 terminatingReplicas int32!;
  6 conditions []DeploymentCondition; 8 collisionCount int32!
DeploymentCondition: 1 type string!; 2 status string!; 6 lastUpdateTime Time; 7 lastTransitionTime Time;
  4 reason; 5 message
ReplicaSet: 1 metadata ObjectMeta; 2 spec ReplicaSetSpec; 3 status ReplicaSetStatus
ReplicaSetSpec: 1 replicas int32!; 4 minReadySeconds int32; 2 selector LabelSelector; 3 template PodTemplateSpec
ReplicaSetStatus: 1 replicas int32!; 2 fullyLabeledReplicas int32; 4 readyReplicas int32;
  5 availableReplicas int32; 7 terminatingReplicas int32!; 3 observedGeneration int64;
  6 conditions []ReplicaSetCondition
ReplicaSetCondition: 1 type string!; 2 status string!; 3 lastTransitionTime Time; 4 reason; 5 message

Ingress: 1 metadata ObjectMeta; 2 spec IngressSpec; 3 status IngressStatus
IngressSpec: 4 ingressClassName string!; 1 defaultBackend IngressBackend; 2 tls []IngressTLS; 3 rules []IngressRule
IngressBackend: 4 service IngressServiceBackend; 3 resource TypedLocalObjectReference
IngressServiceBackend: 1 name string!; 2 port ServiceBackendPort
ServiceBackendPort: 1 name; 2 number int32
IngressTLS: 1 hosts []string; 2 secretName
IngressRule: 1 host; 2 - IngressRuleValue
IngressRuleValue: 1 http HTTPIngressRuleValue
HTTPIngressRuleValue: 1 paths []HTTPIngressPath
HTTPIngressPath: 1 path; 3 pathType string!; 2 backend IngressBackend
IngressStatus: 1 loadBalancer IngressLoadBalancerStatus
IngressLoadBalancerStatus: 1 ingress []IngressLoadBalancerIngress
IngressLoadBalancerIngress: 1 ip; 2 hostname; 4 ports []IngressPortStatus
IngressPortStatus: 1 port int32!; 2 protocol string!; 3 error string!
IngressClass: 1 metadata ObjectMeta; 2 spec IngressClassSpec
IngressClassSpec: 1 controller; 2 parameters IngressClassParametersReference
IngressClassParametersReference: 1 apiGroup string!; 2 kind string!; 3 name string!; 4 scope string!;
  5 namespace string!

EndpointSlice: 1 metadata ObjectMeta; 4 addressType string!; 2 endpoints []Endpoint; 3 ports []EndpointPort
Endpoint: 1 addresses []string; 2 conditions EndpointConditions; 3 hostname string!; 4 targetRef ObjectReference;
  5 deprecatedTopology map; 6 nodeName string!; 7 zone string!; 8 hints EndpointHints
EndpointConditions: 1 ready bool!; 2 serving bool!; 3 terminating bool!
EndpointHints: 1 forZones []ForZone; 2 forNodes []ForNode
ForZone: 1 name string!
ForNode: 1 name string!
EndpointPort: 1 name string!; 2 protocol string!; 3 port int32!; 4 appProtocol string!

Lease: 1 metadata ObjectMeta; 2 spec LeaseSpec
LeaseSpec: 1 holderIdentity string!; 2 leaseDurationSeconds int32!; 3 acquireTime MicroTime;
  4 renewTime MicroTime; 5 leaseTransitions int32!; 6 strategy string!; 7 preferredHolder string!
"""

SCALARS = frozenset({"string", "bytes", "int32", "int64", "bool"})
SPECIALS = frozenset({"Time", "MicroTime", "Quantity", "IntOrString", "FieldsV1"})
_MAP_VALUES = {"map": "string", "map<bytes>": "bytes", "map<Quantity>": "Quantity"}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT, I64, LEN, I32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # the JSON name; "" for an embedded struct whose fields are inlined into the parent
    kind: str  # a scalar, a special type or a message name
    repeated: bool = False
    map_value: str | None = None  # "string", "bytes" or "Quantity" for map<string, ...>
    keep_zero: bool = False


def parse_schema(text: str) -> dict[str, dict[int, Field]]:
    """The message table from its compact text form (see the comment above `_SCHEMA`)."""
    schemas: dict[str, dict[int, Field]] = {}
    for block in text.replace("\n  ", " ").strip().splitlines():
        if not block.strip():
            continue
        message, _, body = block.partition(":")
        fields: dict[int, Field] = {}
        for entry in body.split(";"):
            parts = entry.split()
            num, name, type_ = int(parts[0]), parts[1], (parts[2] if len(parts) > 2 else "string")
            keep_zero = type_.endswith("!")
            type_ = type_.rstrip("!")
            if num in fields:
                raise ValueError(f"{message}: field {num} appears twice")
            if type_ in _MAP_VALUES:
                fields[num] = Field(name, "map", map_value=_MAP_VALUES[type_])
            elif type_.startswith("[]"):
                fields[num] = Field(name, type_[2:], repeated=True)
            else:
                fields[num] = Field("" if name == "-" else name, type_, keep_zero=keep_zero)
        schemas[message.strip()] = fields
    for message, fields in schemas.items():
        for f in fields.values():
            if f.map_value is None and f.kind not in SCALARS | SPECIALS and f.kind not in schemas:
                raise ValueError(f"{message}.{f.name}: unknown message type {f.kind}")
    return schemas


SCHEMAS = parse_schema(_SCHEMA)

# The kinds this server stores, by (apiVersion, kind); each is its own message in the table.
KINDS: dict[tuple[str, str], str] = {
    (r.api_version, r.kind): r.kind for r in resources.RESOURCES if r.kind in SCHEMAS
}


# -- the wire decoder ------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        b = buf[i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, i + 1
        shift += 7
    if len(buf) - pos >= 10:
        raise ProtobufError(f"{where}: a varint is longer than 10 bytes")
    raise ProtobufError(f"{where}: the message ends inside a varint")


def iter_fields(buf: bytes, where: str) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field of a message: an int for varints, bytes otherwise."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, where)
        num, wire = key >> 3, key & 7
        if num == 0 or num > 0x1FFFFFFF:
            raise ProtobufError(f"{where}: invalid field number {num}")
        value: Any
        if wire == VARINT:
            value, pos = _varint(buf, pos, where)
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if pos + size > end:
                raise ProtobufError(f"{where}: field {num} is truncated")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == LEN:
            size, pos = _varint(buf, pos, where)
            if size > end - pos:
                raise ProtobufError(f"{where}: field {num} claims {size} bytes but only {end - pos} remain")
            value, pos = buf[pos:pos + size], pos + size
        else:  # 3 and 4 are proto2 groups, which no Kubernetes type uses; 6 and 7 do not exist
            raise ProtobufError(f"{where}: field {num} has unsupported wire type {wire}")
        yield num, wire, value


def _expect(wire: int, want: int, where: str) -> None:
    if wire != want:
        raise ProtobufError(f"{where}: wire type {wire} where {want} was expected")


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _scalar(kind: str, wire: int, value: Any, where: str) -> Any:
    if kind in ("string", "bytes"):
        _expect(wire, LEN, where)
        if kind == "bytes":
            return base64.b64encode(value).decode("ascii")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtobufError(f"{where}: string is not valid UTF-8") from None
    _expect(wire, VARINT, where)
    if kind == "bool":
        return value != 0
    # Go truncates a varint to the field's width: int32 keeps the low 32 bits.
    return _signed(value, 32 if kind == "int32" else 64)


def _packed(kind: str, buf: bytes, where: str) -> list[Any]:
    if kind not in ("int32", "int64", "bool"):
        raise ProtobufError(f"{where}: a packed list of {kind} is not valid")
    out, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos, where)
        out.append(_scalar(kind, VARINT, value, where))
    return out


def _time(buf: bytes, where: str, micro: bool) -> str | None:
    seconds = nanos = 0
    for num, wire, value in iter_fields(buf, where):
        if num == 1:
            seconds = _scalar("int64", wire, value, where)
        elif num == 2:
            nanos = _scalar("int32", wire, value, where)
    if seconds == 0 and nanos == 0:
        return None  # Go's zero time.Time, which kube marshals as null or leaves out
    try:
        t = _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise ProtobufError(f"{where}: time {seconds}s is out of range") from None
    # metav1.Time is RFC 3339 to the second; MicroTime keeps six fractional digits.
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return f"{text}.{t.microsecond:06d}Z" if micro else f"{text}Z"


def _special(kind: str, buf: bytes, where: str) -> Any:
    if kind in ("Time", "MicroTime"):
        return _time(buf, where, micro=kind == "MicroTime")
    if kind == "Quantity":
        text = "0"  # an empty Quantity message is the zero quantity
        for num, wire, value in iter_fields(buf, where):
            if num == 1:
                text = _scalar("string", wire, value, where)
        return text
    if kind == "IntOrString":
        type_, int_val, str_val = 0, 0, ""
        for num, wire, value in iter_fields(buf, where):
            if num == 1:
                type_ = _scalar("int64", wire, value, where)
            elif num == 2:
                int_val = _scalar("int32", wire, value, where)
            elif num == 3:
                str_val = _scalar("string", wire, value, where)
        return str_val if type_ == 1 else int_val
    # FieldsV1: its JSON form is the raw JSON document it carries.
    raw = b""
    for num, wire, value in iter_fields(buf, where):
        if num == 1:
            _expect(wire, LEN, where)
            raw = value
    try:
        return json.loads(raw) if raw else {}
    except ValueError as e:
        raise ProtobufError(f"{where}: FieldsV1 is not JSON: {e}") from None


def _value(kind: str, buf: bytes, where: str) -> Any:
    if kind in SPECIALS:
        return _special(kind, buf, where)
    return decode_message(buf, kind, where)


def _map_entry(f: Field, buf: bytes, where: str) -> tuple[str, Any]:
    key, value = "", None
    for num, wire, raw in iter_fields(buf, where):
        if num == 1:
            key = _scalar("string", wire, raw, where)
        elif num == 2:
            if f.map_value == "Quantity":
                _expect(wire, LEN, where)
                value = _special("Quantity", raw, where)
            else:
                value = _scalar(f.map_value or "string", wire, raw, where)
    if value is None:
        value = "0" if f.map_value == "Quantity" else ""
    return key, value


def decode_message(buf: bytes, message: str, where: str | None = None) -> dict[str, Any]:
    """One message of the table, as the JSON object kube would print for it."""
    schema = SCHEMAS[message]
    where = where or message
    out: dict[str, Any] = {}
    # A singular message field may appear more than once; protobuf merges the occurrences, which is
    # the same as decoding their concatenation.
    nested: dict[int, list[bytes]] = {}
    for num, wire, value in iter_fields(buf, where):
        f = schema.get(num)
        if f is None:
            continue  # a field this table does not know (newer API, or an unused type): skipped
        at = f"{where}.{f.name}" if f.name else where  # an inlined struct's fields read as the parent's
        if f.map_value is not None:
            _expect(wire, LEN, at)
            k, v = _map_entry(f, value, at)
            out.setdefault(f.name, {})[k] = v
        elif f.repeated and f.kind in SCALARS:
            items = out.setdefault(f.name, [])
            if wire == LEN and f.kind not in ("string", "bytes"):
                items.extend(_packed(f.kind, value, at))
            else:
                items.append(_scalar(f.kind, wire, value, at))
        elif f.repeated:
            _expect(wire, LEN, at)
            out.setdefault(f.name, []).append(_value(f.kind, value, at))
        elif f.kind in SCALARS:
            v = _scalar(f.kind, wire, value, at)
            if f.keep_zero or v not in ("", 0):
                out[f.name] = v
            else:
                out.pop(f.name, None)
        else:
            _expect(wire, LEN, at)
            nested.setdefault(num, []).append(value)
    for num, chunks in nested.items():
        f = schema[num]
        at = f"{where}.{f.name}" if f.name else where
        v = _value(f.kind, chunks[0] if len(chunks) == 1 else b"".join(chunks), at)
        if not f.name:
            out.update(v)  # an embedded struct: its fields are the parent's, as in Go's JSON
        elif v is not None or f.keep_zero:
            out[f.name] = v
    return out


def decode_object(body: bytes) -> dict[str, Any]:
    """A kube protobuf request body -> the object as Kubernetes JSON (apiVersion, kind, metadata, spec, ...)."""
    body = bytes(body)
    if not body.startswith(MAGIC):
        raise ProtobufError("the body is not Kubernetes protobuf: it does not start with the 4-byte prefix k8s\\x00")
    api_version = kind = content_encoding = content_type = ""
    raw: bytes | None = None
    for num, wire, value in iter_fields(body[len(MAGIC):], "Unknown"):
        if num == 1:
            _expect(wire, LEN, "Unknown.typeMeta")
            for tnum, twire, tvalue in iter_fields(value, "Unknown.typeMeta"):
                if tnum == 1:
                    api_version = _scalar("string", twire, tvalue, "Unknown.typeMeta.apiVersion")
                elif tnum == 2:
                    kind = _scalar("string", twire, tvalue, "Unknown.typeMeta.kind")
        elif num == 2:
            _expect(wire, LEN, "Unknown.raw")
            raw = value
        elif num == 3:
            content_encoding = _scalar("string", wire, value, "Unknown.contentEncoding")
        elif num == 4:
            content_type = _scalar("string", wire, value, "Unknown.contentType")
    if not api_version or not kind:
        raise ProtobufError("the protobuf envelope names no apiVersion and kind")
    if content_encoding:
        raise ProtobufError(f"the protobuf envelope's contentEncoding {content_encoding!r} is not supported")
    if content_type not in ("", MEDIA_TYPE):
        raise ProtobufError(f"the protobuf envelope carries {content_type!r}, not protobuf")
    message = KINDS.get((api_version, kind))
    if message is None:
        raise ProtobufError(f"{kind} in {api_version} cannot be sent as protobuf to this server; send it as JSON")
    if raw is None:
        raise ProtobufError(f"the protobuf envelope for {kind} carries no object")
    return {"apiVersion": api_version, "kind": kind, **decode_message(raw, message, kind)}
